"""The factorised Bernoulli guide q(z|x) = prod_j Bernoulli(z_j | sigmoid(l_j(x))) for binary latents z in {0, 1}^D.

Its samples are discrete, so there is no reparameterised gradient: train it with an estimator that uses score
functions or relaxations (docs/estimators.md, "Supported latents"); the reparameterised-only estimators are refused.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
from torch import Tensor, nn

from pyro_vae.checks import check_number


class BernoulliGuide(nn.Module):
    """An affine ``head`` maps the encoder's features to D logits; site "z" in ``pyro.plate("data", N)``, and
    ``posterior(x)`` has batch shape (N,), event shape (D,)."""

    def __init__(self, encoder: nn.Module, z_dim: int) -> None:
        super().__init__()
        check_number(z_dim, "z_dim", integer=True, low=1)
        self.encoder = encoder
        self.z_dim = z_dim
        self.head = nn.Linear(encoder.out_features, z_dim)

    def forward(self, x: Tensor, num_samples: int | None = None) -> Tensor:
        pyro.module("guide", self)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.posterior(x))

    def logits(self, x: Tensor) -> Tensor:
        """l(x) of shape (N, D): q(z_j = 1 | x) = sigmoid(l_j(x))."""
        return self.head(self.encoder(x))

    def posterior(self, x: Tensor) -> dist.Distribution:
        """q(z|x) as a distribution with batch shape (N,) and event shape (D,)."""
        return dist.Bernoulli(logits=self.logits(x)).to_event(1)
