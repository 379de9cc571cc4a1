"""What stops training: ``DivergenceGuard`` and the two ways a run ends early (``NonFiniteLossError``,
``TrainingInterrupted``). Where a run stands is ``pyro_vae.run_dir.Position``."""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from pyro_vae.errors import UserError

#: Training has diverged when the loss per example exceeds this multiple of the first step's (in magnitude),
#: e.g. Adam with --lr 1e6 gives 1e28 nats after one step, yet finite. A healthy loss falls; KL warm-up and
#: beta raise it by far less.
DIVERGENCE_FACTOR = 1e6


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite, or diverged (``DIVERGENCE_FACTOR``); training stopped and the last
    good checkpoint was kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C (SIGINT) or SIGTERM; ``pyro-vae train --resume`` continues it.

    The checkpoint holds ``epoch`` completed epochs plus ``step`` steps of the next one (``step`` is 0
    when a second Ctrl-C stopped training at once: then the last completed epoch's checkpoint is kept).
    ``signum`` is the signal; the CLI exits with 128 + signum (130 for Ctrl-C, 143 for SIGTERM). ``out`` is
    the run directory.
    """

    def __init__(
        self, message: str, epoch: int, step: int = 0, signum: int = signal.SIGINT, out: Path | None = None
    ) -> None:
        super().__init__(message)
        self.out = out
        self.epoch = epoch
        self.step = step
        self.signum = int(signum)


class DivergenceGuard:
    """Stops training, with a ``NonFiniteLossError`` naming the epoch and step and what is kept (``kept()``),
    on a NaN or infinite loss, a loss per example over ``factor`` times the first step's, non-finite weights,
    a non-finite test ELBO, or (at beta >= 1) a test ELBO below -``factor`` times the first step's loss."""

    def __init__(self, kept: Callable[[], str], factor: float = DIVERGENCE_FACTOR) -> None:
        self.kept = kept
        self.factor = factor
        self.scale: float | None = None  # |loss per example| of the first step of this process

    def _error(self, what: str, epoch: int, step: int) -> NonFiniteLossError:
        return NonFiniteLossError(
            f"{what} at epoch {epoch}, step {step}; {self.kept()}; try a smaller --lr or --clip-norm"
        )

    def check_loss(self, loss: float, batch_size: int, epoch: int, step: int) -> None:
        if not math.isfinite(loss):
            raise self._error(f"non-finite loss ({loss})", epoch, step)
        per_example = loss / batch_size
        if self.scale is None:
            self.scale = max(abs(per_example), 1.0)
        if per_example > self.factor * self.scale:
            raise self._error(
                f"training diverged: loss {per_example:.3g} nats/example, over "
                f"{self.factor:.0e} times the first step's {self.scale:.3g},",
                epoch,
                step,
            )

    def check_weights(self, params: Iterable[torch.Tensor], epoch: int, step: int) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise self._error("non-finite weights", epoch, step)

    def check_test_elbo(self, elbo: float, epoch: int, step: int, beta: float = 1.0) -> None:
        # Below beta = 1 the run trains another objective than the ELBO reported, and the ELBO may be
        # astronomically low while training is healthy (a VampPrior at beta = 0: its components shrink to the
        # guide's floor scale, and log p(z) of any other code is about -1e13): only a non-finite one stops it then.
        too_low = beta >= 1.0 and -elbo > self.factor * (self.scale or 1.0)
        if not math.isfinite(elbo) or too_low:
            raise self._error(f"training diverged: test ELBO {elbo:.3g} nats/example after", epoch, step)
