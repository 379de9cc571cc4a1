"""Gaussian likelihood with fixed sigma: the blog's squared-error reconstruction loss, with its constants.

log p(x|z) = -1/2 [k log(2 pi sigma^2) + ||x - f(z)||^2 / sigma^2], so with sigma = 1 the
negative log-likelihood is 1/2 * sum of squared errors plus k/2 log 2 pi; with sigma^2 = 1/2 it is the
blog's sum of squared errors ||x - x_hat||^2 plus a constant, which weighs reconstruction against KL as the blog does.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro.distributions as dist
import torch
from pyro_vae.models.networks import check_positive
from torch import Tensor, nn

from pyro_vae.checks import check_number


@dataclass
class GaussianLikelihoodOptions:
    """Fields:
    sigma: the fixed standard deviation of the gaussian likelihood (1 gives 1/2 the summed squared error;
        1/sqrt(2) gives the blog's summed squared error, up to constants).
    """

    sigma: float = 1.0

    def __post_init__(self) -> None:
        check_positive(self.sigma, "sigma")


class NormalLikelihood(nn.Module):
    """Shared part of the Gaussian likelihoods: p(x|z) = N(x; f(z), diag sigma^2), sigma given by the subclass."""

    binary_data = False
    name = "gaussian"
    sigma: Tensor
    event_ndim: int = 1  # dimensions of one example: 1 for flat data (D,), 3 for images (C, H, W)

    def forward(self, decoded: Tensor) -> dist.Distribution:
        return dist.Normal(decoded, self.sigma.to(decoded.dtype).expand_as(decoded)).to_event(self.event_ndim)

    def mean(self, decoded: Tensor) -> Tensor:
        return decoded

    def check_support(self, x: Tensor) -> None:
        if not torch.isfinite(x).all():
            raise ValueError(f"{self.name} likelihood needs finite data; found NaN or infinite values")


class GaussianLikelihood(NormalLikelihood):
    """p(x|z) = N(x; f(z), sigma^2 I) with a fixed sigma (default 1)."""

    def __init__(self, sigma: float = 1.0, event_ndim: int = 1) -> None:
        super().__init__()
        self.event_ndim = event_ndim
        check_number(sigma, "likelihood sigma", positive=True)
        self.register_buffer("sigma", torch.tensor(float(sigma)))
