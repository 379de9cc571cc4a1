"""The affine decoder f(z) = W z + b.

With a Gaussian likelihood of fixed sigma this is probabilistic PCA (Tipping & Bishop 1999):
p(x) = N(x; b, W W^T + sigma^2 I) exactly, and p(z|x) is Gaussian, which makes it the
project's exact-likelihood truth for testing bounds and estimators.
"""

from __future__ import annotations

from torch import Tensor, nn


class LinearDecoder(nn.Module):
    """f(z) = W z + b with W of shape (x_dim, z_dim)."""

    def __init__(self, z_dim: int, x_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(z_dim, x_dim)

    @property
    def weight(self) -> Tensor:
        return self.linear.weight

    @property
    def bias(self) -> Tensor:
        return self.linear.bias

    def forward(self, z: Tensor) -> Tensor:
        return self.linear(z)
