"""A convolutional decoder: fully connected layers, then the transposed mirror of the stride-2 convolution stack."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyro_vae.models.conv import check_image_shape, transposed_stack
from pyro_vae.models.networks import check_widths, mlp
from torch import Tensor, nn


@dataclass
class ConvDecoderOptions:
    """Fields:
    channels: output channels of the encoder-side stride-2 convolutions the decoder mirrors, first to last
        (the decoder runs them in reverse; each transposed convolution doubles H and W).
    hidden: widths of the fully connected layers before the transposed convolutions (None: the VAEConfig's
        hidden).
    """

    channels: tuple[int, ...] = (32, 64)
    hidden: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.channels = check_widths(self.channels, "channels")  # type: ignore[assignment]
        self.hidden = check_widths(self.hidden, "hidden")


class ConvDecoder(nn.Module):
    """f(z) = TransposedConvs(reshape(MLP(z))): z (..., z_dim) -> the likelihood's raw parameter (..., C, H, W).

    The MLP (``hidden`` widths, ReLU, also after its last layer) maps z to channels[-1] feature maps of
    H/2^L x W/2^L, and L transposed convolutions (kernel 4, stride 2, padding 1; ``pyro_vae.models.conv``) double
    them back to C x H x W. No batch normalisation, so each example's output depends on its own z only.
    """

    def __init__(
        self, z_dim: int, x_shape: Sequence[int], channels: Sequence[int] = (32, 64), hidden: Sequence[int] = (256,)
    ) -> None:
        super().__init__()
        c, h, w = check_image_shape(x_shape, channels, "decoder")
        self.x_shape = (c, h, w)
        factor = 2 ** len(channels)
        self.start = (int(channels[-1]), h // factor, w // factor)
        start_size = self.start[0] * self.start[1] * self.start[2]
        self.fc = nn.Sequential(mlp(z_dim, tuple(hidden), start_size, activation=nn.ReLU), nn.ReLU())
        self.deconv = transposed_stack(channels, c)

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        maps = self.fc(z).reshape(-1, *self.start)
        return self.deconv(maps).reshape(*lead, *self.x_shape)
