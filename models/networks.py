"""Building blocks shared by encoders and decoders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pyro_vae.checks import check_number

#: The hidden activations an MLP may have (``activation`` option of the mlp encoder and decoder): softplus, the
#: project's default; tanh, as in Burda et al. 2016; relu, as in pythae's reproductions.
ACTIVATIONS: dict[str, type[nn.Module]] = {"softplus": nn.Softplus, "tanh": nn.Tanh, "relu": nn.ReLU}


def check_activation(value: object, name: str = "activation") -> None:
    """ValueError (one line) unless ``value`` names one of ``ACTIVATIONS``."""
    if value not in ACTIVATIONS:
        raise ValueError(f"{name} must be one of {', '.join(ACTIVATIONS)}, got {value!r}")


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int | None,
    activation: type[nn.Module] = nn.Softplus,
) -> nn.Sequential:
    """An MLP in_dim -> hidden[0] -> ... -> out_dim with ``activation`` between layers, none at the end.

    ``out_dim=None`` ends at the last hidden layer, activation included (a feature trunk for a guide's head);
    with no hidden layers either, it is the identity (an empty ``nn.Sequential``).
    """
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), activation()]
        width = h
    if out_dim is not None:
        layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def as_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    """An event shape as a tuple of ints; an int D means flat data, (D,)."""
    return (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)


def event_size(shape: Sequence[int]) -> int:
    """The number of values in one example of event shape ``shape`` ((64,) -> 64, (1, 28, 28) -> 784)."""
    size = 1
    for s in shape:
        size *= int(s)
    return size


def check_count(value: object, name: str, least: int = 1) -> None:
    """UserError (a one-line ValueError) unless ``value`` is an integer >= ``least`` (an options dataclass's
    check; ``pyro_vae.checks.check_number``)."""
    check_number(value, name, integer=True, low=least)


def check_positive(value: object, name: str) -> None:
    """UserError (a one-line ValueError) unless ``value`` is a positive finite number (``check_number``)."""
    check_number(value, name, positive=True)


def check_flag(value: object, name: str) -> None:
    """ValueError (one line) unless ``value`` is True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def check_widths(value: Sequence[int] | None, name: str) -> tuple[int, ...] | None:
    """``value`` as a tuple of positive integer widths (None stays None: the config's default widths)."""
    if value is None:
        return None
    widths = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ValueError(f"{name} sizes must be positive integers, got {list(widths)}")
    return widths


@dataclass
class HiddenOptions:
    """Fields:
    hidden: hidden layer widths of this network; none at all makes it affine (None: the VAEConfig's hidden).
    """

    hidden: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.hidden = check_widths(self.hidden, "hidden")


class GatedDense(nn.Module):
    """h = (W x + b) * sigmoid(V x + c): a dense layer whose units are gated by a learned sigmoid gate (Dauphin et
    al. 2017, "Language Modeling with Gated Convolutional Networks", eq. 1; the layer of Tomczak & Welling 2018,
    "VAE with a VampPrior", Sec. 4, in both of their networks)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.h = nn.Linear(in_features, out_features)
        self.g = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(x) * torch.sigmoid(self.g(x))


def gated_mlp(in_dim: int, hidden: Sequence[int], out_dim: int | None) -> nn.Sequential:
    """``GatedDense`` layers in_dim -> hidden[0] -> ... then, with ``out_dim``, a linear layer to it (a feature trunk
    for a guide's head when ``out_dim`` is None; with no hidden layers, the identity)."""
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers.append(GatedDense(width, h))
        width = h
    if out_dim is not None:
        layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)
