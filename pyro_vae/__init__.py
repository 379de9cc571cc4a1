"""pyro-vae: variational autoencoders as Pyro model/guide pairs, tied by tests to the closed-form loss."""

from pyro_vae.beta import BetaScaled, LatentScale
from pyro_vae.config import VAEConfig
from pyro_vae.estimators import ESTIMATORS
from pyro_vae.evaluation import log_likelihood
from pyro_vae.registry import DECODERS, LIKELIHOODS, PRIORS, build

__version__ = "0.1.0"

__all__ = [
    "DECODERS",
    "ESTIMATORS",
    "LIKELIHOODS",
    "PRIORS",
    "BetaScaled",
    "LatentScale",
    "VAEConfig",
    "build",
    "log_likelihood",
    "__version__",
]
