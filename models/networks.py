"""Building blocks shared by encoders and decoders."""

from __future__ import annotations

from collections.abc import Sequence

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


def as_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    """An event shape as a tuple of ints; an int D means flat data, (D,)."""
    return (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)


def event_size(shape: Sequence[int]) -> int:
    """The number of values in one example of event shape ``shape`` ((64,) -> 64, (1, 28, 28) -> 784)."""
    size = 1
    for s in shape:
        size *= int(s)
    return size
