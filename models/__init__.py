"""Pyro generative models p(z) p(x|z): priors, decoders, likelihoods and the model.

Nothing here imports ``pyro_vae``; the dependency points one way only.
"""

from models.decoders import LinearDecoder, MLPDecoder
from models.likelihoods import BernoulliLikelihood, GaussianLikelihood
from models.model import VAEModel
from models.priors import GaussianPrior, StandardNormalPrior

__all__ = [
    "BernoulliLikelihood",
    "GaussianLikelihood",
    "GaussianPrior",
    "LinearDecoder",
    "MLPDecoder",
    "StandardNormalPrior",
    "VAEModel",
]
