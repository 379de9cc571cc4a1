"""The general diagonal Gaussian prior N(mu_p, diag sigma_p^2) of the derivation (eq. 29)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro_vae.models.networks import check_flag
from torch import nn
from torch.distributions.transforms import SoftplusTransform

from pyro_vae.checks import check_number


def _as_vector(value: float | Sequence[float] | torch.Tensor, z_dim: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.get_default_dtype())
    if t.dim() == 0:
        t = t.expand(z_dim)
    if t.shape != (z_dim,):
        raise ValueError(f"{name} must be a scalar or have length z_dim={z_dim}, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t.clone()


def _check_numbers(value: float | Sequence[float], name: str, positive: bool) -> float | tuple[float, ...]:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    for v in values:
        check_number(v, name, positive=positive, note="one number, or one per latent dimension")
    return tuple(values) if isinstance(value, (tuple, list)) else value


@dataclass
class GaussianPriorOptions:
    """Fields:
    loc: the mean mu_p of the gaussian prior N(mu_p, diag sigma_p^2): one number for every latent dimension, or
        one per dimension.
    scale: the standard deviation sigma_p of the gaussian prior, > 0: one number for every latent dimension, or
        one per dimension.
    learn: make the gaussian prior's mu_p and sigma_p learnable.
    """

    loc: float | tuple[float, ...] = 0.0
    scale: float | tuple[float, ...] = 1.0
    learn: bool = False

    def __post_init__(self) -> None:
        self.loc = _check_numbers(self.loc, "loc", positive=False)
        self.scale = _check_numbers(self.scale, "scale", positive=True)
        check_flag(self.learn, "learn")


class GaussianPrior(nn.Module):
    """p(z) = N(mu_p, diag sigma_p^2), with fixed or learnable mu_p and sigma_p.

    When learnable, sigma_p = softplus(rho) so it stays positive under gradient steps.
    """

    def __init__(
        self,
        z_dim: int,
        loc: float | Sequence[float] | torch.Tensor = 0.0,
        scale: float | Sequence[float] | torch.Tensor = 1.0,
        learnable: bool = False,
    ) -> None:
        super().__init__()
        check_number(z_dim, "z_dim", integer=True, low=1)
        loc_t = _as_vector(loc, z_dim, "prior loc")
        scale_t = _as_vector(scale, z_dim, "prior scale")
        if (scale_t <= 0).any():
            raise ValueError(f"prior scale must be positive, got {scale_t.tolist()}")
        self.learnable = learnable
        if learnable:
            self.loc = nn.Parameter(loc_t)
            self.raw_scale = nn.Parameter(SoftplusTransform().inv(scale_t))
        else:
            self.register_buffer("loc", loc_t)
            self.register_buffer("fixed_scale", scale_t)

    @property
    def scale(self) -> torch.Tensor:
        return F.softplus(self.raw_scale) if self.learnable else self.fixed_scale

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)
