"""A likelihood for 8-bit images: the discretised logistic (Kingma et al. 2016; Salimans et al. 2017).

Pixels are the values x = k / (B - 1), k = 0, ..., B - 1 (B = 256 for 8-bit images scaled to [0, 1]). Each is a
logistic with location mu (the decoder's output) and a learned scale s, discretised to those values:

.. math::

    P(x = k / (B-1)) = \\sigma\\Big(\\frac{x + \\delta/2 - \\mu}{s}\\Big)
        - \\sigma\\Big(\\frac{x - \\delta/2 - \\mu}{s}\\Big), \\qquad \\delta = 1 / (B - 1),

with the edge bins taking the tails: P(x = 0) = sigma((delta/2 - mu) / s) and P(x = 1) = 1 - sigma((1 - delta/2 - mu)
/ s), so the B probabilities sum to 1. Unlike a Gaussian density on grey values, this is a probability of the
pixel values the data actually take: log p(x|z) <= 0, and -log p(x) / (D log 2) is bits per dimension directly.

- [1] Kingma, Salimans, Jozefowicz, Chen, Sutskever, Welling (2016), "Improved Variational Inference with Inverse
  Autoregressive Flow", NeurIPS (the discretised logistic likelihood).
- [2] Salimans, Karpathy, Chen, Kingma (2017), "PixelCNN++", ICLR (its edge cases at 0 and 255).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistribution
from pyro_vae.models.networks import as_shape
from torch import Tensor, nn
from torch.distributions import constraints
from torch.distributions.transforms import SoftplusTransform
from torch.distributions.utils import broadcast_all

from pyro_vae.checks import check_number

#: Floor of the learned scale, so that 1 / s stays finite.
MIN_SCALE = 1e-4


class DiscretizedLogistic(TorchDistribution):
    """Logistic(loc, scale) discretised to the ``bins`` values k / (bins - 1) of [0, 1], edge bins taking the tails.

    ``log_prob`` is written as log sigma(b) + log sigma(-a) + log(1 - exp(a - b)) for the bin [a, b] in standardised
    units, an identity for sigma(b) - sigma(a) that stays accurate far in the tails (where the difference of two
    sigmoids rounds to 0). ``mean`` is exact: sum_k delta P(x >= k delta).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, loc: Tensor, scale: Tensor, bins: int = 256, validate_args: bool | None = None) -> None:
        check_number(bins, "bins", integer=True, low=2)
        self.loc, self.scale = broadcast_all(loc, scale)
        self.bins = bins
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance: DiscretizedLogistic | None = None) -> DiscretizedLogistic:
        new = self._get_checked_instance(DiscretizedLogistic, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc, new.scale, new.bins = self.loc.expand(batch_shape), self.scale.expand(batch_shape), self.bins
        super(DiscretizedLogistic, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        top = self.bins - 1
        k = torch.round(value * top).clamp(0, top)
        inv = 1.0 / self.scale
        # Standardised edges of the bin of k: a = (x - delta/2 - mu) / s, b = (x + delta/2 - mu) / s.
        a = ((k - 0.5) / top - self.loc) * inv
        b = ((k + 0.5) / top - self.loc) * inv
        middle = F.logsigmoid(b) + F.logsigmoid(-a) + torch.log(-torch.expm1(-inv / top))
        return torch.where(k == 0, F.logsigmoid(b), torch.where(k == top, F.logsigmoid(-a), middle))

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(1e-6, 1 - 1e-6)
            x = self.loc.expand(shape) + self.scale.expand(shape) * (torch.log(u) - torch.log1p(-u))
            top = self.bins - 1
            return torch.round(x * top).clamp(0, top) / top

    @property
    def mean(self) -> Tensor:
        # E[x] = delta * sum_{k=1}^{B-1} P(x >= k delta), P(x >= k delta) = sigma(-((k - 1/2) delta - mu) / s):
        # one pass per level, memory of one batch of pixels (no (..., B) tensor).
        top = self.bins - 1
        total = torch.zeros_like(self.loc)
        for k in range(1, self.bins):
            total += torch.sigmoid((self.loc - (k - 0.5) / top) / self.scale)
        return total / top


@dataclass
class DiscretizedLogisticOptions:
    """Fields:
    bins: the number of pixel values k / (bins - 1) in [0, 1]: 256 for 8-bit images, 17 for the digits.
    scale_per_pixel: learn one logistic scale per pixel instead of one per channel.
    init_scale: the logistic scale at the start of training, in units of the [0, 1] pixel range.
    """

    bins: int = 256
    scale_per_pixel: bool = False
    init_scale: float = 0.1


class DiscretizedLogisticLikelihood(nn.Module):
    """p(x|z) = prod_d DiscretizedLogistic(x_d; mu_d = f(z)_d, s_c), the decoder's output being mu.

    The scale s = softplus(rho) + MIN_SCALE is learned: one per channel (one in all for rows of D values), or one
    per pixel with ``scale_per_pixel``.
    """

    binary_data = False
    #: A probability of the pixel values, not a density: bits per dimension need no bin-width correction.
    discrete = True

    def __init__(
        self, x_shape: int | tuple[int, ...], bins: int = 256, scale_per_pixel: bool = False, init_scale: float = 0.1
    ) -> None:
        super().__init__()
        x_shape = as_shape(x_shape)
        check_number(bins, "the discretized-logistic likelihood's bins", integer=True, low=2)
        check_number(init_scale, "init_scale", low=MIN_SCALE, bounds="()")
        self.bins = bins
        self.event_ndim = len(x_shape)
        if scale_per_pixel:
            shape = x_shape
        else:
            shape = (x_shape[0], *([1] * (len(x_shape) - 1))) if len(x_shape) == 3 else (1,)
        rho = SoftplusTransform().inv(torch.tensor(float(init_scale) - MIN_SCALE))
        self.raw_scale = nn.Parameter(rho.expand(shape).clone())

    @property
    def scale(self) -> Tensor:
        """s, of shape (C, 1, 1) per channel (or ``x_shape`` per pixel; (1,) for rows)."""
        return F.softplus(self.raw_scale) + MIN_SCALE

    def forward(self, decoded: Tensor) -> dist.Distribution:
        scale = self.scale.to(decoded.dtype).expand_as(decoded)
        return DiscretizedLogistic(decoded, scale, self.bins).to_event(self.event_ndim)

    def mean(self, decoded: Tensor) -> Tensor:
        """E[x|z], exactly (the discretisation and the edge bins included)."""
        return DiscretizedLogistic(decoded, self.scale.to(decoded.dtype).expand_as(decoded), self.bins).mean

    def check_support(self, x: Tensor) -> None:
        top = self.bins - 1
        if not (torch.isfinite(x).all() and (x >= 0).all() and (x <= 1).all()):
            raise ValueError(
                "discretized-logistic likelihood needs pixel values in [0, 1]; scale 8-bit images by 1/255"
            )
        if ((x * top - torch.round(x * top)).abs() > 1e-3).any():
            raise ValueError(
                f"discretized-logistic likelihood needs pixel values k/{top} ({self.bins} levels); these data take "
                "other values: give 8-bit images, or --likelihood-bins L for data with L levels"
            )
