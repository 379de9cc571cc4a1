"""The standard normal prior N(0, I) of the derivation (eq. 40)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.checks import check_number


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I) over ``z_dim`` latent dimensions (one event of shape ``(z_dim,)``)."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        check_number(z_dim, "z_dim", integer=True, low=1)
        # Buffers follow .to(device, dtype), so the distribution matches the data.
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)
