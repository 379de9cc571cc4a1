"""The amortised diagonal Normal guide q(z|x) = N(mu(x), diag sigma(x)^2) (Kingma & Welling 2013)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
from torch import Tensor, nn


class NormalGuide(nn.Module):
    """Pyro guide with the model's signature: samples site "z" inside the same ``pyro.plate("data", N)``.

    Its parameters are registered with Pyro under the name "guide".
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: Tensor, num_samples: int | None = None) -> Tensor:
        pyro.module("guide", self)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.posterior(x))

    def posterior(self, x: Tensor) -> dist.Distribution:
        """q(z|x) as a distribution with batch shape (N,) and event shape (z_dim,)."""
        loc, scale = self.encoder(x)
        return dist.Normal(loc, scale).to_event(1)
