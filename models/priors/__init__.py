"""Priors p(z): small modules whose ``forward()`` returns a distribution with event_dim 1.

A new prior is one class with a ``forward(self) -> pyro.distributions.Distribution``
whose ``event_shape == (z_dim,)`` and ``batch_shape == ()``; the model places it
inside its ``pyro.plate("data", N)``. Registering a ``kl_divergence`` for
(guide distribution, prior distribution) with ``torch.distributions.register_kl``
makes ``TraceMeanField_ELBO`` use it analytically.
"""

from pyro_vae.models.priors.bernoulli import BernoulliPrior, BernoulliPriorOptions
from pyro_vae.models.priors.categorical import CategoricalPrior, CategoricalPriorOptions
from pyro_vae.models.priors.flow import FlowPrior, FlowPriorOptions
from pyro_vae.models.priors.gaussian import GaussianPrior, GaussianPriorOptions
from pyro_vae.models.priors.mixture import MixturePrior, MixturePriorOptions
from pyro_vae.models.priors.standard import StandardNormalPrior
from pyro_vae.models.priors.uniform_sphere import UniformSphere, UniformSpherePrior
from pyro_vae.models.priors.vamp import VampPrior, VampPriorOptions

__all__ = [
    "BernoulliPrior",
    "BernoulliPriorOptions",
    "CategoricalPrior",
    "CategoricalPriorOptions",
    "FlowPrior",
    "FlowPriorOptions",
    "GaussianPrior",
    "GaussianPriorOptions",
    "MixturePrior",
    "MixturePriorOptions",
    "StandardNormalPrior",
    "UniformSphere",
    "UniformSpherePrior",
    "VampPrior",
    "VampPriorOptions",
]
