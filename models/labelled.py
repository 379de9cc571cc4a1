"""Labels as part of a model's input: the packed batch of the conditional and semi-supervised models.

The training loop, the evaluation and the checkpoints pass one tensor per batch. A model that reads labels
(``labelled_input = True``) takes its batch packed: each row is the example's values, flattened, then one more
column holding its class as a float (exact for any class below 2^24), or ``UNLABELLED`` (-1) where the class is
unknown. ``pack`` and ``unpack`` are the two directions; the model and its guide unpack the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: The label column's value for an example whose class is not given (the unlabelled rows of M2).
UNLABELLED = -1


def pack(x: Tensor, y: Tensor) -> Tensor:
    """(N, D + 1): the rows of ``x`` ``(N, *x_shape)`` flattened, then the labels ``y`` (N,) (``UNLABELLED``: none)."""
    if y.shape != (x.shape[0],):
        raise ValueError(f"need one label per example: {x.shape[0]} examples, labels of shape {tuple(y.shape)}")
    return torch.cat([x.flatten(1), y.to(device=x.device, dtype=x.dtype).unsqueeze(1)], dim=1)


def unpack(packed: Tensor, x_shape: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(x of shape ``(N, *x_shape)``, y of shape (N,), long; ``UNLABELLED`` where unknown): the inverse of ``pack``."""
    return packed[:, :-1].reshape(packed.shape[0], *x_shape), packed[:, -1].round().long()


def one_hot(y: Tensor, classes: int, like: Tensor) -> Tensor:
    """onehot(y) in ``like``'s dtype, shape ``(*y.shape, classes)``."""
    return F.one_hot(y, classes).to(like.dtype)


def join(z: Tensor, code: Tensor) -> Tensor:
    """[z, code] along the last axis, the leading axes broadcast (an enumerated y has shape (K, 1, K))."""
    lead = torch.broadcast_shapes(z.shape[:-1], code.shape[:-1])
    return torch.cat([z.expand(*lead, z.shape[-1]), code.expand(*lead, code.shape[-1])], dim=-1)
