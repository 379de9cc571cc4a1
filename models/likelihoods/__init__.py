"""Likelihoods p(x|z): modules mapping the decoder output to a distribution whose event shape is one example's
(``x_shape``: (D,) for flat data, (C, H, W) for images).

Each also has ``mean(decoded)`` (E[x|z], the image a decoding shows), ``check_support(x)`` which raises
ValueError, with a one-line message, for data outside the distribution's support, and a class attribute
``binary_data`` (True only for the Bernoulli, whose grey pixels the trainer binarises).
"""

from pyro_vae.models.likelihoods.bernoulli import BernoulliLikelihood
from pyro_vae.models.likelihoods.continuous_bernoulli import ContinuousBernoulliLikelihood
from pyro_vae.models.likelihoods.discretized_logistic import (
    DiscretizedLogistic,
    DiscretizedLogisticLikelihood,
    DiscretizedLogisticOptions,
)
from pyro_vae.models.likelihoods.gaussian import GaussianLikelihood, GaussianLikelihoodOptions
from pyro_vae.models.likelihoods.gaussian_learned import LearnedGaussianLikelihood, LearnedGaussianOptions

__all__ = [
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "DiscretizedLogistic",
    "DiscretizedLogisticLikelihood",
    "DiscretizedLogisticOptions",
    "GaussianLikelihood",
    "GaussianLikelihoodOptions",
    "LearnedGaussianLikelihood",
    "LearnedGaussianOptions",
]
