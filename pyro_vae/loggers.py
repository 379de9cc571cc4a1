"""Where training also sends its per-epoch metrics: nowhere else (``"none"``), TensorBoard (``"tensorboard"``),
MLflow (``"mlflow"``, ``pyro_vae.mlflow_logger``) or Weights & Biases (``"wandb"``, ``pyro_vae.wandb_logger``).

``metrics.jsonl`` is always written; ``--logger tensorboard`` (``train(..., logger="tensorboard")``) also writes the
same numbers with ``torch.utils.tensorboard.SummaryWriter`` into ``DIR/tensorboard/``, one scalar per metric with
the epoch as its step: ``tensorboard --logdir DIR`` shows the curves. It needs the ``tensorboard`` package
(``pip install tensorboard``, or ``pip install "pyro-vae[tensorboard]"``), which pyro-vae does not require.
MLflow and W&B also get the run's config (flattened) and its figures; each is an optional extra too
(``pip install "pyro-vae[mlflow]"``, ``"pyro-vae[wandb]"``).

A logger has ``log(record)`` (one epoch's ``metrics.jsonl`` record), ``log_figures(paths)`` and
``close(status)`` (``"FINISHED"``, ``"KILLED"`` when interrupted, ``"FAILED"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyro_vae.errors import UserError
from pyro_vae.mlflow_logger import MLflowLogger, require_mlflow
from pyro_vae.named import did_you_mean
from pyro_vae.wandb_logger import WandbLogger, require_wandb

#: The loggers by name.
LOGGERS = ("none", "tensorboard", "mlflow", "wandb")
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

    def log_figures(self, paths: list[Path]) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
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

    def close(self, status: str = "FINISHED") -> None:
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
    {"tensorboard": _summary_writer, "mlflow": require_mlflow, "wandb": require_wandb}.get(name, lambda: None)()


def check_mlflow_uri(name: str, mlflow_uri: str | None) -> None:
    """A tracking URI goes with the MLflow logger only."""
    if mlflow_uri is not None and name != "mlflow":
        raise UserError(f"--mlflow-uri is for --logger mlflow (the logger is {name!r}); add --logger mlflow")


def make_logger(
    name: str,
    out: Path,
    first_epoch: int = 0,
    *,
    config: dict[str, Any] | None = None,
    resume: bool = False,
    mlflow_uri: str | None = None,
) -> NoLogger | MLflowLogger | WandbLogger:
    """The logger ``name`` (one of ``LOGGERS``) for the run directory ``out``, training after ``first_epoch``.

    ``config``: the run's config as a dict (MLflow params, W&B config); ``resume``: continue the MLflow or W&B run
    recorded in ``out``; ``mlflow_uri``: the MLflow tracking URI (default: ``$MLFLOW_TRACKING_URI``, else
    ``out/mlruns``).
    """
    check_logger(name)
    check_mlflow_uri(name, mlflow_uri)
    if name == "tensorboard":
        return TensorBoardLogger(out, first_epoch)
    if name == "mlflow":
        return MLflowLogger(out, config or {}, resume=resume, uri=mlflow_uri)
    if name == "wandb":
        return WandbLogger(out, config or {}, resume=resume)
    return NoLogger()


__all__ = ["LOGGERS", "NoLogger", "TensorBoardLogger", "check_logger", "check_mlflow_uri", "make_logger"]
