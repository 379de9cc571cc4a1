"""Building blocks of the convolutional encoder and decoder: the standard stride-2 convolution stack and its
transposed mirror (as in DCGAN, Radford et al. 2016, and the convolutional VAEs of pythae).

Each convolution has kernel 4, stride 2 and padding 1, so it halves H and W exactly, and each transposed one
doubles them exactly: with L layers H and W must be divisible by 2^L (by 4 for the default two layers: 28, 32,
64). ReLU between layers, and no batch normalisation: it would couple the examples of a batch, so that the loss
optimised would no longer be the sum of per-example ELBOs (and evaluation would differ from training).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

KERNEL, STRIDE, PADDING = 4, 2, 1


def check_image_shape(x_shape: Sequence[int], channels: Sequence[int], what: str) -> tuple[int, int, int]:
    """(C, H, W) of ``x_shape``, checked: three dimensions, H and W divisible by 2 ** len(channels)."""
    shape = tuple(int(s) for s in x_shape)
    if len(shape) != 3:
        raise ValueError(
            f"the conv {what} needs image data of shape (C, H, W), got examples of shape {shape}; "
            "use --dataset mnist, an image array or a folder of images, or the mlp networks"
        )
    if not channels or any(int(c) < 1 for c in channels):
        raise ValueError(f"the conv {what} needs at least one positive channel width, got {list(channels)}")
    factor = 2 ** len(channels)
    c, h, w = shape
    if h % factor or w % factor:
        raise ValueError(
            f"the conv {what} with {len(channels)} stride-2 layers needs H and W divisible by {factor}, got "
            f"{h}x{w}; resize the images (--image-size) or give fewer --{what}-channels"
        )
    return c, h, w


def conv_stack(in_channels: int, channels: Sequence[int]) -> nn.Sequential:
    """Conv(4, stride 2, padding 1) + ReLU for each width in ``channels``: (C, H, W) -> (channels[-1], H/2^L, W/2^L)."""
    layers: list[nn.Module] = []
    width = in_channels
    for c in channels:
        layers += [nn.Conv2d(width, int(c), KERNEL, STRIDE, PADDING), nn.ReLU()]
        width = int(c)
    return nn.Sequential(*layers)


def transposed_stack(channels: Sequence[int], out_channels: int) -> nn.Sequential:
    """The mirror of ``conv_stack(out_channels, channels)``: ConvTranspose(4, stride 2, padding 1) layers from
    channels[-1] down to ``out_channels``, ReLU between them and none after the last (its output is the
    likelihood's raw parameter)."""
    widths = [int(c) for c in reversed(channels)] + [out_channels]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.ConvTranspose2d(a, b, KERNEL, STRIDE, PADDING))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)
