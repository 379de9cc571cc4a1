"""Labels for the models that read them (``--model conditional``, ``--model m2``): which training examples keep
their label, and the packed inputs (``pyro_vae.models.labelled``) the trainer and evaluation feed those models.

M2's labelled subset (``--labelled N``) is balanced: N // K examples of each class, the first N mod K classes one
more, drawn with the fixed ``LABEL_SEED`` (independent of the training seed, so runs of different seeds share the
labels). The trainer records the chosen indices in the checkpoint, and a resumed run uses those.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from pyro_vae.data import VAEData
from pyro_vae.errors import UserError
from pyro_vae.models.labelled import UNLABELLED, pack

#: Seed of the choice of M2's labelled examples.
LABEL_SEED = 0


def reads_labels(model: Any) -> bool:
    """True for a model whose input is a packed (x, y) batch."""
    return bool(getattr(model, "labelled_input", False))


def check_labels(data: VAEData, classes: int, what: str) -> None:
    """One-line ``UserError`` unless ``data`` has train and test labels in 0 .. classes-1."""
    if data.train_y is None or data.test_y is None:
        raise UserError(
            f"the {what} model needs labels and {data.name} has none; use digits, mnist, fashion-mnist, a folder "
            "with one sub-folder per class, or an array with --labels FILE"
        )
    low = int(min(data.train_y.min(), data.test_y.min()))
    high = int(max(data.train_y.max(), data.test_y.max()))
    if low < 0 or high >= classes:
        raise UserError(f"{data.name} has labels {low} .. {high} but the {what} model has --model-classes {classes}")


def choose_labelled(train_y: Tensor, count: int, classes: int, seed: int = LABEL_SEED) -> Tensor:
    """Indices (sorted) of ``count`` training examples, ``count // classes`` of each class and one more of the first
    ``count % classes`` classes, each class's drawn without replacement by a generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    y = train_y.cpu().numpy()
    chosen = []
    for k in range(classes):
        want = count // classes + (1 if k < count % classes else 0)
        members = np.flatnonzero(y == k)
        if len(members) < want:
            raise UserError(
                f"--labelled {count} needs {want} examples of class {k}; the training set has {len(members)} "
                f"(--model-classes {classes}: give the data's number of classes, or fewer labels)"
            )
        chosen.append(rng.choice(members, size=want, replace=False))
    return torch.as_tensor(np.sort(np.concatenate(chosen)), dtype=torch.long)


def training_labels(data: VAEData, labelled: Tensor | None) -> Tensor:
    """The label column of the training inputs: every label (``labelled`` None), or those at the indices
    ``labelled`` and ``UNLABELLED`` elsewhere."""
    assert data.train_y is not None
    if labelled is None:
        return data.train_y.clone()
    y = torch.full_like(data.train_y, UNLABELLED)
    y[labelled] = data.train_y[labelled]
    return y


def test_input(model: Any, data: VAEData) -> Tensor:
    """The test set as ``model`` reads it: packed with its labels for a conditional model (log p(x|y)), unlabelled
    for M2 (its bound on log p(x)); unchanged for a model that reads no labels."""
    x = data.test_x_eval
    if not reads_labels(model):
        return x
    assert data.test_y is not None
    y = data.test_y if getattr(model, "needs_all_labels", False) else torch.full_like(data.test_y, UNLABELLED)
    return pack(x, y)
