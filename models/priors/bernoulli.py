"""The factorised Bernoulli prior on binary latents z in {0, 1}^D (discrete VAEs, e.g. Rolfe 2017's setting)."""

from __future__ import annotations

from dataclasses import dataclass

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro_vae.models.networks import check_flag
from torch import Tensor, nn
from torch.distributions import register_kl

from pyro_vae.checks import check_number


def check_probability(value: object, name: str) -> None:
    """UserError (a one-line ValueError) unless ``value`` is a number strictly between 0 and 1 (a logit must be
    finite)."""
    check_number(value, name, low=0, high=1, bounds="()")


@dataclass
class BernoulliPriorOptions:
    """Fields:
    probs: p(z_j = 1), strictly between 0 and 1, the same for every latent dimension (the initial value when
        learned).
    learn: learn the prior's logits, one per latent dimension.
    """

    probs: float = 0.5
    learn: bool = False

    def __post_init__(self) -> None:
        check_probability(self.probs, "probs")
        check_flag(self.learn, "learn")


class BernoulliPrior(nn.Module):
    """p(z) = prod_j Bernoulli(z_j | sigmoid(l_j)), with fixed or learnable logits l (one event of shape (D,))."""

    def __init__(self, z_dim: int, probs: float = 0.5, learnable: bool = False) -> None:
        super().__init__()
        check_number(z_dim, "z_dim", integer=True, low=1)
        check_probability(probs, "probs")
        logits = torch.full((z_dim,), float(torch.logit(torch.tensor(float(probs)))))
        self.learnable = learnable
        if learnable:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)

    def forward(self) -> dist.Distribution:
        return dist.Bernoulli(logits=self.logits).to_event(1)


@register_kl(dist.Bernoulli, dist.Bernoulli)
def kl_bernoulli(p: dist.Bernoulli, q: dist.Bernoulli) -> Tensor:
    """KL(p || q) = sum over {0, 1} of p(z) (log p(z) - log q(z)), elementwise, from the logits.

    Registered for Pyro's Bernoulli (more specific than torch's, so it is the one found, also inside Pyro's
    Independent KL) because torch 2.x's own indexes q's mask into a tensor of the broadcast shape and fails unless
    both have the same batch shape (a guide's (N, D) against a prior's (D,)); from logits it is also finite where
    the probabilities round to 0 or 1.
    """
    pi = torch.sigmoid(p.logits)
    return pi * (F.logsigmoid(p.logits) - F.logsigmoid(q.logits)) + (1 - pi) * (
        F.logsigmoid(-p.logits) - F.logsigmoid(-q.logits)
    )
