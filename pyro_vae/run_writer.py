"""``RunWriter``: every file a training run writes into its run directory, and what a failed write keeps.

Only the process that holds the run's lock (``pyro_vae.lock.run_lock``) writes; under ``torch.distributed`` that is
rank 0, and the other ranks have no writer. Each write is atomic (``checkpoint.pt``, ``config.json``, a rebuilt
``metrics.jsonl``) or undone on failure (an append to ``metrics.jsonl``), so a full disk, a read-only file system,
a permission taken away or an I/O error leaves the last good checkpoint and metrics as they were, and no
temporary file; the ``WriteError`` it raises becomes one line saying what is kept (``failure_message``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pyro_vae import figures as run_figures
from pyro_vae.checkpoint import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    PREVIOUS,
    WriteError,
    append_jsonl,
    atomic_write_text,
    save_checkpoint,
    write_jsonl,
)
from pyro_vae.config import TrainConfig
from pyro_vae.data import VAEData
from pyro_vae.errors import UserError
from pyro_vae.guards import Position, TrainingInterrupted
from pyro_vae.runs import remove_derived


class RunWriter:
    """Writes the run directory ``out`` of one training run; ``resumed`` when it continues a checkpoint there."""

    #: False for the writer of a rank that writes nothing (``pyro_vae.distributed.ReadOnlyWriter``).
    writes = True

    def __init__(self, out: Path, resumed: bool) -> None:
        self.out = out
        self.checkpoint_path = out / CHECKPOINT
        self.metrics_path = out / METRICS
        self._current = not resumed  # False until a resumed run has dropped what was made from the old state

    def start(self, config: TrainConfig) -> None:
        """A fresh run: remove an old one (``--overwrite``), then write ``config.json`` and an empty metrics file.

        Called only once everything is checked; the old checkpoint goes first, so never a new config sits
        beside an old checkpoint (which ``--resume`` would take for this run), nor files made from it.
        """
        self.checkpoint_path.unlink(missing_ok=True)
        (self.out / PREVIOUS).unlink(missing_ok=True)
        remove_derived(self.out)
        atomic_write_text(self.out / CONFIG, config.to_json() + "\n")
        write_jsonl(self.metrics_path, [])

    def restore(self, history: list[dict[str, Any]]) -> None:
        """A resumed run: the checkpoint is the source of truth, so ``metrics.jsonl`` becomes its history (a line
        lost in a crash between the checkpoint and its metrics line comes back); left alone if it is that already."""
        try:
            current = [json.loads(line) for line in self.metrics_path.read_text().splitlines()]
        except (OSError, ValueError):
            current = None
        if current != history:
            write_jsonl(self.metrics_path, history)

    def save(self, record: dict[str, Any]) -> None:
        """Save the checkpoint ``record`` (the one it replaces becomes ``checkpoint.previous.pt``). Before the first
        save of a resumed run, the files made from the old checkpoint are removed (first, so that none is ever
        stale, even if this save fails)."""
        if not self._current:
            remove_derived(self.out)
        save_checkpoint(record, self.checkpoint_path)

    def saved(self, config: TrainConfig) -> None:
        """After the first save of a resumed run: ``config.json`` takes the options that changed (``--epochs``, ...).
        Written after the checkpoint, so a failed save leaves it as it was."""
        if not self._current:
            atomic_write_text(self.out / CONFIG, config.to_json() + "\n")
            self._current = True

    def append(self, record: dict[str, Any]) -> None:
        """Add the epoch's line to ``metrics.jsonl`` (after its checkpoint was saved)."""
        append_jsonl(self.metrics_path, record)

    def failure_message(self, err: WriteError, position: Position) -> str:
        """One line for a failed write: the file and cause, what is kept, and how to go on."""
        then = "continue with --resume" if position.saved else "run it again"
        return (
            f"could not write {err.path} ({err.reason}); {position.kept(self.checkpoint_path)}; {err.advice}, "
            f"then {then}"
        )

    def figures(
        self,
        model: torch.nn.Module,
        guide: torch.nn.Module,
        data: VAEData,
        metrics: Sequence[dict[str, Any]],
        config: TrainConfig | None = None,
    ) -> list[Path]:
        """The figures of ``pyro_vae.figures`` at the end of training, captioned with what made them when ``config``
        is given (one line if interrupted or a write fails: training is complete, and ``pyro-vae plot`` writes
        them)."""
        try:
            return run_figures.write_figures(model, guide, data, metrics, self.out, config=config)
        except KeyboardInterrupt:
            raise TrainingInterrupted(
                f"interrupted while writing figures; training is complete in {self.checkpoint_path} "
                f"(pyro-vae plot {self.out} writes them)",
                len(metrics),
                out=self.out,
            ) from None
        except WriteError as err:
            raise UserError(
                f"could not write {err.path} ({err.reason}); training is complete in {self.checkpoint_path}; "
                f"{err.advice}, then pyro-vae plot {self.out} writes the figures"
            ) from None
