"""An MLP encoder producing the diagonal Gaussian parameters (mu, sigma) of q(z|x)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions.transforms import SoftplusTransform

from models.decoders.mlp import mlp

#: Floor added to the scale so that sigma never reaches 0 in float32 (log sigma stays finite).
MIN_SCALE = 1e-5


class MLPEncoder(nn.Module):
    """x -> (mu(x), sigma(x)), with sigma = softplus(s(x)) + MIN_SCALE.

    softplus rather than the blog's exp(log sigma^2 / 2): it is positive, grows linearly
    rather than exponentially for large pre-activations (no overflow early in training), and
    sigma = softplus(s) is still a smooth bijection onto (MIN_SCALE, inf). With
    ``hidden=()`` the encoder is affine, which can represent the exact posterior of the
    linear-Gaussian model.
    """

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int] = (256,)) -> None:
        super().__init__()
        self.z_dim = z_dim
        # One network with 2 * z_dim outputs: loc and pre-softplus scale share the trunk.
        self.net = mlp(x_dim, tuple(hidden), 2 * z_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(x)
        loc, raw_scale = out[..., : self.z_dim], out[..., self.z_dim :]
        return loc, F.softplus(raw_scale) + MIN_SCALE

    @torch.no_grad()
    def set_affine(self, weight: Tensor, bias: Tensor, scale: Tensor) -> None:
        """Make an affine encoder (``hidden=()``) output loc = weight @ x + bias and a constant scale.

        Used to set the guide to a known posterior (e.g. the exact one of the linear-Gaussian model).
        """
        layer = self.net[-1]
        if len(self.net) != 1:
            raise ValueError("set_affine needs an encoder built with hidden=()")
        layer.weight.zero_()
        layer.weight[: self.z_dim] = weight
        layer.bias[: self.z_dim] = bias
        s = torch.as_tensor(scale, dtype=layer.bias.dtype) - MIN_SCALE
        layer.bias[self.z_dim :] = SoftplusTransform().inv(s)
