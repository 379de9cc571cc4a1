"""Pyro generative models p(z) p(x|z): priors, decoders, likelihoods and the model.

Installed as ``pyro_vae.models``. Nothing here imports the rest of ``pyro_vae``: the dependency points one way
only (``tests/test_architecture.py`` checks it).
"""

from pyro_vae.models.decoders import LinearDecoder, MLPDecoder
from pyro_vae.models.gaussian_conditional import GaussianConditional
from pyro_vae.models.hierarchical import HierarchicalModel, HierarchicalOptions
from pyro_vae.models.likelihoods import BernoulliLikelihood, GaussianLikelihood
from pyro_vae.models.model import VAEModel
from pyro_vae.models.priors import GaussianPrior, StandardNormalPrior

__all__ = [
    "BernoulliLikelihood",
    "GaussianLikelihood",
    "GaussianConditional",
    "GaussianPrior",
    "HierarchicalModel",
    "HierarchicalOptions",
    "LinearDecoder",
    "MLPDecoder",
    "StandardNormalPrior",
    "VAEModel",
]
