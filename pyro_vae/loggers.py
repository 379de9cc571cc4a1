"""Where training also sends its per-epoch metrics: nowhere else (``"none"``) or TensorBoard (``"tensorboard"``).

``metrics.jsonl`` is always written; ``--logger tensorboard`` (``train(..., logger="tensorboard")``) also writes the
same numbers with ``torch.utils.tensorboard.SummaryWriter`` into ``DIR/tensorboard/``, one scalar per metric with
the epoch as its step: ``tensorboard --logdir DIR`` shows the curves. It needs the ``tensorboard`` package
(``pip install tensorboard``, or ``pip install "pyro-vae[tensorboard]"``), which pyro-vae does not require.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyro_vae.errors import UserError
from pyro_vae.named import did_you_mean

#: The loggers by name.
LOGGERS = ("none", "tensorboard")
#: The metrics of a ``metrics.jsonl`` record sent to the logger, under these tags.
SCALARS = {
    "train_loss": "loss/train (beta-weighted, nats per example)",
    "test_elbo": "test/ELBO (nats per example)",
    "test_recon": "test/reconstruction -E_q log p(x|z)",
    "test_kl": "test/KL(q || p)",
    "beta": "beta",
}


class NoLogger:
    """Logs nothing (``metrics.jsonl`` is written anyway)."""

    def log(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger(NoLogger):
    """The epoch records as TensorBoard scalars in ``out / "tensorboard"``.

    ``first_epoch``: the epoch training starts after (a resumed run's); events of later epochs left by an earlier,
    interrupted process are purged, so each epoch appears once.
    """

    def __init__(self, out: Path, first_epoch: int = 0) -> None:
        self.writer = _summary_writer()(log_dir=str(out / "tensorboard"), purge_step=first_epoch + 1)

    def log(self, record: dict[str, Any]) -> None:
        for key, tag in SCALARS.items():
            if key in record:  # test_* only in the epochs evaluated (eval_every)
                self.writer.add_scalar(tag, record[key], record["epoch"])
        self.writer.flush()  # a run stopped later keeps what it logged

    def close(self) -> None:
        self.writer.close()


def _summary_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter  # imported here: tensorboard is optional
    except ImportError:
        raise UserError(
            "--logger tensorboard needs the tensorboard package; pip install tensorboard (or drop --logger)"
        ) from None
    return SummaryWriter


def check_logger(name: str) -> None:
    """One-line ``UserError`` for an unknown logger or one whose package is missing (before anything is written)."""
    if name not in LOGGERS:
        hint = did_you_mean(str(name), list(LOGGERS))
        raise UserError(f"unknown logger {name!r}{hint}; choose one of: {', '.join(LOGGERS)}")
    if name == "tensorboard":
        _summary_writer()


def make_logger(name: str, out: Path, first_epoch: int = 0) -> NoLogger:
    """The logger ``name`` (one of ``LOGGERS``) for the run directory ``out``, training after ``first_epoch``."""
    check_logger(name)
    return TensorBoardLogger(out, first_epoch) if name == "tensorboard" else NoLogger()


__all__ = ["LOGGERS", "NoLogger", "TensorBoardLogger", "check_logger", "make_logger"]
