"""A conditional diagonal Gaussian p(z_out | z_in) = N(mu(z_in), diag sigma(z_in)^2), the link between two stochastic
layers of a hierarchical VAE (Burda et al. 2015; Sonderby et al. 2016).

References:
    [1] Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
    [2] C. K. Sonderby, T. Raiko, L. Maaloe, S. K. Sonderby, O. Winther. Ladder Variational Autoencoders. NIPS 2016.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro_vae.models.networks import ACTIVATIONS, mlp
from torch import Tensor, nn
from torch.distributions.transforms import SoftplusTransform

#: Floor added to every conditional scale, as the guides' MIN_SCALE: sigma never reaches 0 in float32.
MIN_SCALE = 1e-5


class GaussianConditional(nn.Module):
    """z_in (…, in_dim) -> N(mu, diag sigma^2) over (out_dim,): an MLP with ``hidden`` widths outputs (mu, s), and
    sigma = softplus(s) + MIN_SCALE (as ``NormalGuide``). With ``hidden=()`` mu is affine in z_in."""

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (), activation: str = "softplus") -> None:
        super().__init__()
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.net = mlp(self.in_dim, tuple(hidden), 2 * self.out_dim, ACTIVATIONS[activation])

    def loc_scale(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(mu(z), sigma(z)), each of shape (…, out_dim)."""
        out = self.net(z)
        return out[..., : self.out_dim], F.softplus(out[..., self.out_dim :]) + MIN_SCALE

    def forward(self, z: Tensor) -> dist.Distribution:
        loc, scale = self.loc_scale(z)
        return dist.Normal(loc, scale).to_event(1)

    @torch.no_grad()
    def set_affine(self, weight: Tensor, bias: Tensor, scale: Tensor) -> None:
        """Make it N(weight @ z + bias, diag scale^2), a fixed scale (needs ``hidden=()``): to set a known
        linear-Gaussian link, e.g. the exact chain of ``pyro_vae.linear_gaussian.LinearGaussianChain``."""
        layer = self.net[-1]
        if len(self.net) != 1:
            raise ValueError("set_affine needs an affine conditional: build it with hidden=()")
        layer.weight.zero_()
        layer.weight[: self.out_dim] = weight
        layer.bias[: self.out_dim] = bias
        s = torch.as_tensor(scale, dtype=layer.bias.dtype) - MIN_SCALE
        layer.bias[self.out_dim :] = SoftplusTransform().inv(s)
