"""A multilayer-perceptron decoder (Kingma & Welling 2013, appendix C)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pyro_vae.models.networks import ACTIVATIONS, HiddenOptions, as_shape, check_activation, event_size, mlp
from torch import Tensor, nn


@dataclass
class MLPDecoderOptions(HiddenOptions):
    """Fields:
    hidden: hidden widths of the MLP decoder; none at all makes it affine (None: the VAEConfig's hidden).
    activation: softplus or tanh (Burda et al. 2015's), between the decoder's layers.
    """

    activation: Literal["softplus", "tanh"] = "softplus"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_activation(self.activation)


class MLPDecoder(nn.Module):
    """f(z) = MLP(z), shaped as one example (``x_shape``): the raw parameter of p(x|z) (Bernoulli logits or
    Gaussian mean). ``x_shape`` may be an int D for flat data."""

    def __init__(
        self, z_dim: int, x_shape: int | Sequence[int], hidden: Sequence[int] = (256,), activation: str = "softplus"
    ) -> None:
        super().__init__()
        self.x_shape = as_shape(x_shape)
        self.net = mlp(z_dim, tuple(hidden), event_size(self.x_shape), ACTIVATIONS[activation])

    def forward(self, z: Tensor) -> Tensor:
        out = self.net(z)
        return out if len(self.x_shape) == 1 else out.unflatten(-1, self.x_shape)
