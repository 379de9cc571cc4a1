"""A validation set held out of the training set (``TrainConfig.validation``), for early stopping and ``best.pt``.

The held-out examples are never trained on. Their ELBO is measured like the test set's: on grey data under a
Bernoulli likelihood they are binarised once, with a fixed seed (``VALIDATION_BINARIZE_SEED``), so every epoch is
scored on the same binary images, as Tomczak & Welling 2018 did for dynamic MNIST (their validation and test sets
were binarised once, with a fixed seed). Under ``TrainConfig.binarization="fixed"`` the training images are binarised
once too (``VAEData.prepare``), each with its draw over the whole training set (``VAEData.kept_rows``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from pyro_vae.data import VAEData
from pyro_vae.errors import UserError

#: The seed of the one binarisation of the validation set (grey data, Bernoulli likelihood).
VALIDATION_BINARIZE_SEED = 777


def validation_indices(n_train: int, n: int, split: str, seed: int) -> Tensor:
    """The indices of the ``n`` training examples held out of ``n_train``: the last ``n`` ("last"), or the first
    ``n`` of a permutation drawn from a CPU generator seeded with ``seed`` ("random"; the same on every machine and
    for every run of that seed, and not drawn from the training stream)."""
    if not 0 < n < n_train:
        raise UserError(
            f"--validation {n}: the training set has {n_train} examples; hold out between 1 and {n_train - 1}"
        )
    if split == "last":
        return torch.arange(n_train - n, n_train)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n_train, generator=generator)[:n].sort().values


def hold_out(data: VAEData, n: int, split: str = "random", seed: int = 0) -> tuple[VAEData, Tensor]:
    """(``data`` without the ``n`` held-out training examples, those examples): ``validation_indices`` chooses them;
    the test set and the order of the remaining training examples are unchanged."""
    n_train = data.train_x.shape[0]
    held = validation_indices(n_train, n, split, seed)
    keep = torch.ones(n_train, dtype=torch.bool)
    keep[held] = False
    train_y = None if data.train_y is None else data.train_y[keep]
    # kept_rows: a fixed binarisation (drawn later, by prepare) gives each remaining image its whole-set draw.
    rest = dataclasses.replace(
        data,
        train_x=data.train_x[keep.to(data.device)],
        train_y=train_y,
        _train_fixed=None,
        kept_rows=(keep.nonzero().squeeze(1), n_train),
    )
    return rest, data.train_x[held.to(data.device)]


def validation_eval(data: VAEData, val_x: Tensor) -> Tensor:
    """The validation set as the likelihood sees it: binarised once with ``VALIDATION_BINARIZE_SEED`` when the data
    are (``data.binarize``, set by ``VAEData.prepare``), else as it is."""
    if not data.binarize:
        return val_x
    generator = torch.Generator().manual_seed(VALIDATION_BINARIZE_SEED)
    return torch.bernoulli(val_x.cpu(), generator=generator).to(val_x.device)
