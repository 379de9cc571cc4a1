"""Name -> constructor registries (plain dicts) and ``build``, the one-call construction.

Each factory takes a ``VAEConfig`` and returns a module. Adding an entry here makes the name
valid in ``VAEConfig`` and on the command line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from guides import MLPEncoder, NormalGuide
from models import (
    BernoulliLikelihood,
    GaussianLikelihood,
    GaussianPrior,
    LinearDecoder,
    MLPDecoder,
    StandardNormalPrior,
)
from models.likelihoods import ContinuousBernoulliLikelihood, LearnedGaussianLikelihood
from models.model import VAEModel
from models.priors import MixturePrior, VampPrior

if TYPE_CHECKING:
    from pyro_vae.config import VAEConfig

Factory = Callable[["VAEConfig"], nn.Module]

#: Prior factories also get the guide's encoder, for priors built from it (the VampPrior).
PriorFactory = Callable[["VAEConfig", nn.Module], nn.Module]

PRIORS: dict[str, PriorFactory] = {
    "standard": lambda c, encoder: StandardNormalPrior(c.z_dim),
    "gaussian": lambda c, encoder: GaussianPrior(c.z_dim, c.prior_loc, c.prior_scale, learnable=c.learn_prior),
    "mixture": lambda c, encoder: MixturePrior(c.z_dim, c.mixture_components),
    "vamp": lambda c, encoder: VampPrior(encoder, c.x_dim, c.mixture_components, learn_weights=c.vamp_learn_weights),
}

LIKELIHOODS: dict[str, Factory] = {
    "bernoulli": lambda c: BernoulliLikelihood(),
    "gaussian": lambda c: GaussianLikelihood(c.sigma),
    "gaussian-learned": lambda c: LearnedGaussianLikelihood(
        c.x_dim, c.sigma, per_pixel=c.sigma_per_pixel, min_sigma=c.min_sigma
    ),
    "continuous-bernoulli": lambda c: ContinuousBernoulliLikelihood(),
}

DECODERS: dict[str, Factory] = {
    "mlp": lambda c: MLPDecoder(c.z_dim, c.x_dim, c.hidden),
    "linear": lambda c: LinearDecoder(c.z_dim, c.x_dim),
}


def build(config: VAEConfig, prior: nn.Module | None = None) -> tuple[VAEModel, NormalGuide]:
    """Construct the Pyro model and guide described by ``config``.

    ``prior`` overrides ``config.prior`` with a user's own prior module (any module whose
    ``forward()`` returns a distribution with event shape (z_dim,)).

    Returns ``(model, guide)``: ``model(x)`` and ``guide(x)`` are the Pyro model and guide for a batch x
    of shape (N, x_dim), both ``nn.Module`` so ``.to(device)``, ``.parameters()`` and ``state_dict`` work.
    """
    config.validate()
    encoder = MLPEncoder(config.x_dim, config.z_dim, config.encoder_widths)
    guide = NormalGuide(encoder)
    prior_module = prior if prior is not None else PRIORS[config.prior](config, encoder)
    model = VAEModel(prior_module, DECODERS[config.decoder](config), LIKELIHOODS[config.likelihood](config))
    return model, guide
