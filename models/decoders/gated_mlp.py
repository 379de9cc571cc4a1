"""A decoder of gated dense layers (Tomczak & Welling 2018, "VAE with a VampPrior", Sec. 4)."""

from __future__ import annotations

from collections.abc import Sequence

from pyro_vae.models.networks import HiddenOptions, as_shape, event_size, gated_mlp
from torch import Tensor, nn


class GatedMLPDecoderOptions(HiddenOptions):
    """Fields:
    hidden: widths of the gated dense layers of the decoder (None: the VAEConfig's hidden).
    """


class GatedMLPDecoder(nn.Module):
    """f(z) = Linear(GatedDense(... GatedDense(z))), shaped as one example: the raw parameter of p(x|z) (Bernoulli
    logits, Gaussian mean); each layer is (W h + b) * sigmoid(V h + c) (``pyro_vae.models.networks.GatedDense``)."""

    def __init__(self, z_dim: int, x_shape: int | Sequence[int], hidden: Sequence[int] = (300, 300)) -> None:
        super().__init__()
        self.x_shape = as_shape(x_shape)
        self.net = gated_mlp(z_dim, tuple(hidden), event_size(self.x_shape))

    def forward(self, z: Tensor) -> Tensor:
        out = self.net(z)
        return out if len(self.x_shape) == 1 else out.unflatten(-1, self.x_shape)
