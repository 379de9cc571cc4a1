"""The amortised diagonal Normal guide q(z|x) = N(mu(x), diag sigma(x)^2) (Kingma & Welling 2013)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions.transforms import SoftplusTransform

from pyro_vae.checks import check_number

#: Floor added to the scale so that sigma never reaches 0 in float32 (log sigma stays finite).
MIN_SCALE = 1e-5


@dataclass
class NormalGuideOptions:
    """Fields:
    log_var_min: lower bound on log sigma^2 (None: none, sigma only stays above its float32 floor); Tomczak &
        Welling (2018) clip log sigma^2 to [-6, 2] (a Hardtanh), which keeps a VampPrior's components from
        collapsing while a KL warm-up starts at beta = 0.
    log_var_max: upper bound on log sigma^2 (None: none).
    """

    log_var_min: float | None = None
    log_var_max: float | None = None

    def __post_init__(self) -> None:
        for name in ("log_var_min", "log_var_max"):
            value = getattr(self, name)
            if value is not None:
                check_number(value, name, low=-60, high=60, note="or None: unbounded")
        if None not in (self.log_var_min, self.log_var_max) and self.log_var_min >= self.log_var_max:
            raise ValueError(f"log_var_min ({self.log_var_min}) must be below log_var_max ({self.log_var_max})")


class NormalGuide(nn.Module):
    """Pyro guide with the model's signature: samples site "z" inside the same ``pyro.plate("data", N)``.

    ``encoder`` maps x to features h (``encoder.out_features`` of them); an affine ``head`` maps h to
    (mu, s) and sigma = softplus(s) + MIN_SCALE. softplus rather than the blog's exp(log sigma^2 / 2): it is
    positive, grows linearly rather than exponentially for large pre-activations (no overflow early in
    training), and is still a smooth bijection onto (MIN_SCALE, inf). Its parameters are registered with
    Pyro under the name "guide". ``log_var_bounds`` (lower, upper; either None) clamps log sigma^2 as Tomczak &
    Welling's Hardtanh does: sigma = clamp(softplus(s) + MIN_SCALE, exp(lower / 2), exp(upper / 2)), with no
    gradient through a clamped sigma.
    """

    def __init__(
        self, encoder: nn.Module, z_dim: int, log_var_bounds: tuple[float | None, float | None] = (None, None)
    ) -> None:
        super().__init__()
        check_number(z_dim, "z_dim", integer=True, low=1)
        self.encoder = encoder
        self.z_dim = z_dim
        low, high = log_var_bounds
        self.scale_bounds = (
            None if low is None else math.exp(low / 2),
            None if high is None else math.exp(high / 2),
        )
        # One layer with 2 * z_dim outputs: loc and pre-softplus scale share the encoder's features.
        self.head = nn.Linear(encoder.out_features, 2 * z_dim)

    def forward(self, x: Tensor, num_samples: int | None = None) -> Tensor:
        pyro.module("guide", self)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.posterior(x))

    def loc_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu(x), sigma(x)), each of shape (N, z_dim)."""
        out = self.head(self.encoder(x))
        loc, raw_scale = out[..., : self.z_dim], out[..., self.z_dim :]
        scale = F.softplus(raw_scale) + MIN_SCALE
        if self.scale_bounds != (None, None):
            scale = scale.clamp(*self.scale_bounds)
        return loc, scale

    def posterior(self, x: Tensor) -> dist.Distribution:
        """q(z|x) as a distribution with batch shape (N,) and event shape (z_dim,)."""
        loc, scale = self.loc_scale(x)
        return dist.Normal(loc, scale).to_event(1)

    @torch.no_grad()
    def set_affine(self, weight: Tensor, bias: Tensor, scale: Tensor) -> None:
        """Make q(z|x) = N(weight @ x + bias, diag scale^2), for an identity encoder (an MLP with ``hidden=()``).

        Used to set the guide to a known posterior (e.g. the exact one of the linear-Gaussian model).
        """
        if any(True for _ in self.encoder.parameters()):
            raise ValueError("set_affine needs an affine guide: build it with encoder_hidden=()")
        self.head.weight.zero_()
        self.head.weight[: self.z_dim] = weight
        self.head.bias[: self.z_dim] = bias
        s = torch.as_tensor(scale, dtype=self.head.bias.dtype) - MIN_SCALE
        self.head.bias[self.z_dim :] = SoftplusTransform().inv(s)
