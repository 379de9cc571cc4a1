"""Gaussian likelihood with a learned sigma, one global value or one per pixel.

log p(x|z) = -1/2 sum_d [log(2 pi sigma_d^2) + (x_d - f(z)_d)^2 / sigma_d^2]. Learning sigma lets the model
choose the balance between reconstruction and KL that a fixed sigma (the MSE) imposes by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pyro_vae.models.likelihoods.gaussian import NormalLikelihood
from pyro_vae.models.networks import as_shape, check_flag, check_positive
from torch import Tensor, nn
from torch.distributions.transforms import SoftplusTransform

from pyro_vae.checks import check_number


@dataclass
class LearnedGaussianOptions:
    """Fields:
    sigma: the initial sigma of the gaussian-learned likelihood (must exceed min_sigma).
    per_pixel: learn one sigma per pixel instead of one global sigma.
    min_sigma: floor of the learned sigma (constant pixels would otherwise drive it to 0 and the ELBO to +inf).
    """

    sigma: float = 1.0
    per_pixel: bool = False
    min_sigma: float = 1e-3

    def __post_init__(self) -> None:
        check_positive(self.sigma, "sigma")
        check_flag(self.per_pixel, "per_pixel")
        check_positive(self.min_sigma, "min_sigma")
        if not self.sigma > self.min_sigma:
            raise ValueError(f"the initial sigma ({self.sigma}) must exceed min_sigma ({self.min_sigma})")


class LearnedGaussianLikelihood(NormalLikelihood):
    """p(x|z) = N(x; f(z), diag sigma^2) with sigma = softplus(rho) + min_sigma learned.

    Args:
        x_shape: the shape of one example, or its dimension D for flat data (one sigma per value when
            ``per_pixel``).
        init_sigma: sigma at the start of training (must exceed ``min_sigma``).
        per_pixel: one sigma per pixel rather than one shared by all pixels.
        min_sigma: floor on sigma. Without it, a pixel that is constant in the training data (the
            border pixels of digits are always 0) lets its sigma shrink to 0 and log p(x|z) grow
            without bound, so the ELBO has no maximum.
    """

    name = "gaussian-learned"

    def __init__(
        self,
        x_shape: int | Sequence[int],
        init_sigma: float = 1.0,
        per_pixel: bool = False,
        min_sigma: float = 1e-3,
    ) -> None:
        super().__init__()
        check_number(min_sigma, "min_sigma", positive=True)
        if not (math.isfinite(init_sigma) and init_sigma > min_sigma):
            raise ValueError(f"initial sigma must be finite and larger than min_sigma={min_sigma}, got {init_sigma}")
        self.per_pixel = per_pixel
        self.min_sigma = float(min_sigma)
        x_shape = as_shape(x_shape)
        self.event_ndim = len(x_shape)
        shape = x_shape if per_pixel else (1,)
        offset = torch.tensor(float(init_sigma - min_sigma))
        self.raw_sigma = nn.Parameter(SoftplusTransform().inv(offset).expand(shape).clone())

    @property
    def sigma(self) -> Tensor:
        """sigma, shape ``x_shape`` when per pixel, else (1,)."""
        return F.softplus(self.raw_sigma) + self.min_sigma
