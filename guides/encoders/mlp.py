"""An MLP encoder: the feature trunk x -> h of an amortised guide (Kingma & Welling 2013, appendix C)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pyro_vae.models.networks import ACTIVATIONS, HiddenOptions, as_shape, check_activation, event_size, mlp
from torch import Tensor, nn


@dataclass
class MLPEncoderOptions(HiddenOptions):
    """Fields:
    hidden: hidden widths of the MLP encoder; none at all makes the guide affine (None: the VAEConfig's hidden).
    activation: softplus or tanh (Burda et al. 2015's), between the encoder's layers.
    """

    activation: Literal["softplus", "tanh"] = "softplus"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_activation(self.activation)


class MLPEncoder(nn.Module):
    """h = MLP(flatten(x)): hidden layers with softplus (or tanh) activations, ``out_features`` = the last width.

    With ``hidden=()`` it is the identity on the flattened input (``out_features`` = D), so the guide's affine
    head alone maps x to q's parameters: an affine encoder, which can represent the exact posterior of the
    linear-Gaussian model.
    """

    def __init__(
        self, x_shape: int | Sequence[int], hidden: Sequence[int] = (256,), activation: str = "softplus"
    ) -> None:
        super().__init__()
        self.x_shape = as_shape(x_shape)
        hidden = tuple(int(h) for h in hidden)
        self.net = mlp(event_size(self.x_shape), hidden, None, ACTIVATIONS[activation])
        self.out_features = hidden[-1] if hidden else event_size(self.x_shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x if len(self.x_shape) == 1 else x.flatten(-len(self.x_shape)))
