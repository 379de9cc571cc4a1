"""How training is spread over processes: the ``Strategy`` a ``Trainer`` is handed, and ``SingleProcess``.

The trainer asks its strategy, never the process group itself, for everything that differs between one process
and a ``torchrun`` launch: the device, the step, the test ELBO, whether to stop (Ctrl-C / SIGTERM), whether a
checkpoint is due, which process writes the run directory, the waits before the first write and after each
checkpoint, and the end of the run (a failed collective becomes one line saying what is kept).
``SingleProcess`` does each in the plain way; ``pyro_vae.distributed.DataParallel`` does it with N ranks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch
from pyro.infer import ELBO
from torch import Tensor, nn

from pyro_vae.config import TrainConfig
from pyro_vae.elbo_terms import ELBOTerms, elbo_terms
from pyro_vae.interrupts import DeferredInterrupts
from pyro_vae.step import TrainStep


class StopFlag(Protocol):
    """What the training loop asks between steps: whether to stop, and on which signal."""

    @property
    def requested(self) -> bool: ...

    signum: int | None


class Strategy(Protocol):
    """The operations a ``Trainer`` needs from the processes that train (``SingleProcess``, ``DataParallel``)."""

    #: Whether this process writes the run directory, shows progress and logs (one process of a launch does).
    writes: bool
    #: Whether its step uses a compiled objective when asked (``--jit``); one that does not runs uncompiled.
    compiles: bool
    #: Whether its step holds the process group (DDP), so that the trainer lets go of it before the session ends.
    step_holds_group: bool

    def device(self, config: TrainConfig) -> torch.device:
        """The device this process trains on."""
        ...

    def make_step(
        self,
        model: nn.Module,
        guide: nn.Module,
        elbo: ELBO,
        optimizer: torch.optim.Optimizer,
        params: Sequence[nn.Parameter],
        config: TrainConfig,
        n_train: int,
        jit: Callable[[], ELBO] | None = None,
    ) -> Callable[..., float]:
        """The training step: ``step(batch, beta=b) -> the batch's summed loss``; ``jit`` makes the compiled form of
        ``elbo`` (``pyro_vae.estimators.training_jit``), used where ``compiles``."""
        ...

    def begin_epoch(self, epoch: int, first_step: int) -> None:
        """Called before the steps of the 0-based ``epoch``, which start after ``first_step`` steps."""
        ...

    def elbo_terms(self, model: nn.Module, guide: nn.Module, x: Tensor, num_samples: int = 1) -> ELBOTerms:
        """``pyro_vae.elbo_terms.elbo_terms`` of the test set ``x``."""
        ...

    def stop_flag(self, signals: DeferredInterrupts) -> StopFlag:
        """What the loop asks whether to stop, made from this process's ``signals``."""
        ...

    def checkpoint_due(self, due: bool) -> bool:
        """Whether to save now, given this process's own answer ``due`` (the processes must agree)."""
        ...

    def before_first_write(self) -> None:
        """Called before the run directory is first written (every process has checked and read the run)."""
        ...

    def after_save(self) -> None:
        """Called after each checkpoint (no process goes on, or stops, before it is written)."""
        ...

    def session(self, kept: Callable[[], str]) -> contextlib.AbstractContextManager[None]:
        """Around the whole run: a clean end, and a failed collective as one line ending with ``kept()``."""
        ...


class SingleProcess:
    """Training in this process alone: it writes, its step is ``TrainStep``, and it asks no one else."""

    writes = True
    compiles = True
    step_holds_group = False

    def device(self, config: TrainConfig) -> torch.device:
        return config.resolve_device()

    def make_step(
        self,
        model: nn.Module,
        guide: nn.Module,
        elbo: ELBO,
        optimizer: torch.optim.Optimizer,
        params: Sequence[nn.Parameter],
        config: TrainConfig,
        n_train: int,
        jit: Callable[[], ELBO] | None = None,
    ) -> Callable[..., float]:
        # fast: validation on the first step only; jit: the compiled objective, checked (pyro_vae/step.py).
        return TrainStep(model, guide, elbo, optimizer, params, config.clip_norm, fast=True, jit=jit or False)

    def begin_epoch(self, epoch: int, first_step: int) -> None:
        """Nothing to do: the step keeps no position."""

    def elbo_terms(self, model: nn.Module, guide: nn.Module, x: Tensor, num_samples: int = 1) -> ELBOTerms:
        return elbo_terms(model, guide, x, num_samples=num_samples)

    def stop_flag(self, signals: DeferredInterrupts) -> StopFlag:
        return signals

    def checkpoint_due(self, due: bool) -> bool:
        return due

    def before_first_write(self) -> None:
        """Nothing to wait for."""

    def after_save(self) -> None:
        """Nothing to wait for."""

    @contextlib.contextmanager
    def session(self, kept: Callable[[], str]) -> Iterator[None]:
        yield
