"""M2's training batches: every step sees the unlabelled batch and a batch of labelled rows (Kingma et al. 2014).

Shuffling M2's few labelled rows in with the unlabelled ones shows each labelled example once an epoch (with 100
labels on MNIST, one labelled row per 600 unlabelled), so the classifier q(y|x) hardly learns. Kingma et al.
2014's objective sums over both sets, and Pyro's SS-VAE example interleaves labelled and unlabelled batches; each
step here takes B unlabelled rows (each unlabelled example once an epoch,
shuffled) plus b_l = min(``labelled_batch``, ``|L|``) labelled rows. The labelled rows of an epoch are read from a
sequence of random permutations of L, laid end to end (so every labelled example comes round equally often:
T b_l / ``|L|`` times an epoch, T = ceil(``|U|`` / B) steps, give or take one).

Scaling: Kingma et al.'s objective sums over all of L and U (``models/m2.py``). A step's loss is::

    sum_{x in U_t} U(x) + s sum_{(x,y) in L_t} [L(x,y) - alpha log q(y|x)],   s = |L| / (T b_l),

so the epoch's summed loss is unbiased for -J^alpha (each labelled example has expected weight 1 an epoch, as in
J^alpha; exactly 1 when T b_l is a multiple of ``|L|``). ``s`` scales the labelled plate of both model and guide
(``M2Model.labelled_scale``), so the KL of z on labelled rows is scaled too.

Every draw is made on torch's global generator when the epoch starts (``m2_batches``), so a resumed run that
restores the epoch's generator state draws the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor


def labelled_plan(n_unlabelled: int, n_labelled: int, batch_size: int, labelled_batch: int) -> tuple[int, int, float]:
    """(T steps an epoch, b_l labelled rows a step, the labelled rows' scale s = ``|L|`` / (T b_l)); with every
    example labelled (no U), T = ceil(``|L|`` / b_l)."""
    per_step = min(labelled_batch, n_labelled)
    steps = math.ceil(n_unlabelled / batch_size) if n_unlabelled else math.ceil(n_labelled / per_step)
    return steps, per_step, n_labelled / (steps * per_step)


def labelled_draws(n_labelled: int, steps: int, per_step: int, device: torch.device | None = None) -> Tensor:
    """(steps, per_step) indices into L: random permutations of 0 .. ``|L|`` - 1 end to end (global generator)."""
    rounds = math.ceil(steps * per_step / n_labelled)
    stream = torch.cat([torch.randperm(n_labelled, device=device) for _ in range(rounds)])
    return stream[: steps * per_step].reshape(steps, per_step)


def m2_batches(
    x: Tensor, known: Tensor, batch_size: int, labelled_batch: int, start: int = 0
) -> tuple[Iterator[Tensor], int]:
    """(the epoch's batches from step ``start`` on, the number of steps T): the packed rows ``x`` (N, D + 1) split
    into unlabelled (``~known``) and labelled rows; each batch is B shuffled unlabelled rows followed by b_l
    labelled rows (``labelled_plan``). All permutations are drawn now, before the first batch."""
    unlabelled, labelled = x[~known], x[known]
    steps, per_step, _ = labelled_plan(unlabelled.shape[0], labelled.shape[0], batch_size, labelled_batch)
    perm = torch.randperm(unlabelled.shape[0], device=x.device)
    draws = labelled_draws(labelled.shape[0], steps, per_step, device=x.device)
    parts = perm.split(batch_size) if unlabelled.shape[0] else [perm] * steps
    batches = (
        torch.cat([unlabelled[idx], labelled[rows]]) for idx, rows in zip(parts[start:], draws[start:], strict=True)
    )
    return batches, steps
