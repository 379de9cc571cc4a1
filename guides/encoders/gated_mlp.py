"""An encoder of gated dense layers (Tomczak & Welling 2018, "VAE with a VampPrior", Sec. 4)."""

from __future__ import annotations

from collections.abc import Sequence

from pyro_vae.models.networks import HiddenOptions, as_shape, event_size, gated_mlp
from torch import Tensor, nn


class GatedMLPEncoderOptions(HiddenOptions):
    """Fields:
    hidden: widths of the gated dense layers of the encoder (None: the VAEConfig's hidden).
    """


class GatedMLPEncoder(nn.Module):
    """h = GatedDense(... GatedDense(flatten(x))), each layer (W h + b) * sigmoid(V h + c)
    (``pyro_vae.models.networks.GatedDense``); ``out_features`` = the last width."""

    def __init__(self, x_shape: int | Sequence[int], hidden: Sequence[int] = (300, 300)) -> None:
        super().__init__()
        self.x_shape = as_shape(x_shape)
        hidden = tuple(int(h) for h in hidden)
        self.net = gated_mlp(event_size(self.x_shape), hidden, None)
        self.out_features = hidden[-1] if hidden else event_size(self.x_shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x if len(self.x_shape) == 1 else x.flatten(-len(self.x_shape)))
