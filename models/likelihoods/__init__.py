"""Likelihoods p(x|z): modules mapping the decoder output to a distribution with event_dim 1.

Each also has ``check_support(x)`` which raises ValueError, with a one-line message,
for data outside the distribution's support.
"""

from models.likelihoods.bernoulli import BernoulliLikelihood
from models.likelihoods.gaussian import GaussianLikelihood

__all__ = ["BernoulliLikelihood", "GaussianLikelihood"]
