"""Building blocks shared by encoders and decoders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn


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


#: Hidden-layer activations by name, for networks whose options choose one (softplus, the project's default; tanh,
#: Burda et al. 2015's).
ACTIVATIONS: dict[str, type[nn.Module]] = {"softplus": nn.Softplus, "tanh": nn.Tanh}


def check_activation(value: object, name: str = "activation") -> None:
    """ValueError (one line) unless ``value`` names an activation of ``ACTIVATIONS``."""
    if value not in ACTIVATIONS:
        raise ValueError(f"{name} must be one of {', '.join(ACTIVATIONS)}, got {value!r}")


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
    """ValueError (one line) unless ``value`` is an integer >= ``least`` (an options dataclass's check)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


def check_positive(value: object, name: str) -> None:
    """ValueError (one line) unless ``value`` is a positive finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


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
