"""The affine decoder f(z) = W z + b.

With a Gaussian likelihood of fixed sigma this is probabilistic PCA (Tipping & Bishop 1999):
p(x) = N(x; b, W W^T + sigma^2 I) exactly, and p(z|x) is Gaussian, which makes it the
project's exact-likelihood truth for testing bounds and estimators.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyro_vae.models.networks import as_shape, event_size
from torch import Tensor, nn


class LinearDecoder(nn.Module):
    """f(z) = W z + b with W of shape (D, z_dim), D the number of values of an example of shape ``x_shape``."""

    def __init__(self, z_dim: int, x_shape: int | Sequence[int]) -> None:
        super().__init__()
        self.x_shape = as_shape(x_shape)
        self.linear = nn.Linear(z_dim, event_size(self.x_shape))

    @property
    def weight(self) -> Tensor:
        return self.linear.weight

    @property
    def bias(self) -> Tensor:
        return self.linear.bias

    def forward(self, z: Tensor) -> Tensor:
        out = self.linear(z)
        return out if len(self.x_shape) == 1 else out.unflatten(-1, self.x_shape)
