"""A multilayer-perceptron decoder (Kingma & Welling 2013, appendix C)."""

from __future__ import annotations

from collections.abc import Sequence

from pyro_vae.models.networks import HiddenOptions, as_shape, event_size, mlp
from torch import Tensor, nn


class MLPDecoderOptions(HiddenOptions):
    """Fields:
    hidden: hidden widths of the MLP decoder; none at all makes it affine (None: the VAEConfig's hidden).
    """


class MLPDecoder(nn.Module):
    """f(z) = MLP(z), shaped as one example (``x_shape``): the raw parameter of p(x|z) (Bernoulli logits or
    Gaussian mean). ``x_shape`` may be an int D for flat data."""

    def __init__(self, z_dim: int, x_shape: int | Sequence[int], hidden: Sequence[int] = (256,)) -> None:
        super().__init__()
        self.x_shape = as_shape(x_shape)
        self.net = mlp(z_dim, tuple(hidden), event_size(self.x_shape))

    def forward(self, z: Tensor) -> Tensor:
        out = self.net(z)
        return out if len(self.x_shape) == 1 else out.unflatten(-1, self.x_shape)
