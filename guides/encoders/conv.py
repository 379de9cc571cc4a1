"""A convolutional encoder: the stride-2 convolution stack, then fully connected layers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyro_vae.models.conv import check_image_shape, conv_stack
from pyro_vae.models.networks import check_widths, mlp
from torch import Tensor, nn


@dataclass
class ConvEncoderOptions:
    """Fields:
    channels: output channels of each stride-2 convolution of the encoder (each halves H and W).
    hidden: widths of the fully connected layers after the convolutions (None: the VAEConfig's hidden).
    """

    channels: tuple[int, ...] = (32, 64)
    hidden: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.channels = check_widths(self.channels, "channels")  # type: ignore[assignment]
        self.hidden = check_widths(self.hidden, "hidden")


class ConvEncoder(nn.Module):
    """h = MLP(flatten(Convs(x))): x (..., C, H, W) -> features (..., out_features).

    L convolutions (kernel 4, stride 2, padding 1, ReLU; ``pyro_vae.models.conv``) take C x H x W to
    channels[-1] x H/2^L x W/2^L, and an MLP with ``hidden`` widths and ReLU (also after its last layer) gives the
    features; ``out_features`` is the last width (the flattened maps when ``hidden`` is empty). No batch
    normalisation: each example's features depend on that example only, as the per-example ELBO needs.
    """

    def __init__(self, x_shape: Sequence[int], channels: Sequence[int] = (32, 64), hidden: Sequence[int] = (256,)):
        super().__init__()
        c, h, w = check_image_shape(x_shape, channels, "encoder")
        self.x_shape = (c, h, w)
        factor = 2 ** len(channels)
        flat = int(channels[-1]) * (h // factor) * (w // factor)
        hidden = tuple(int(k) for k in hidden)
        self.conv = conv_stack(c, channels)
        self.fc = mlp(flat, hidden, None, activation=nn.ReLU)
        self.out_features = hidden[-1] if hidden else flat

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-3]
        maps = self.conv(x.reshape(-1, *self.x_shape))
        return self.fc(maps.flatten(1)).reshape(*lead, self.out_features)
