"""``--logger wandb``: the run's config, per-epoch metrics and figures in a Weights & Biases run.

Written with ``wandb`` itself (``pip install -e ".[wandb]"``): ``wandb.init(config=...)`` takes the run's
``TrainConfig`` flattened like MLflow's params (``pyro_vae.mlflow_logger.flatten``), ``run.log(..., step=epoch)`` the
numbers of each ``metrics.jsonl`` record, and the figures are logged as ``wandb.Image`` under ``figures/``.

Online or offline: ``WANDB_MODE`` when set; else online when there is a login (``WANDB_API_KEY``, or a
``wandb login`` entry in ``~/.netrc``), offline otherwise, so training never waits for a login prompt. W&B's files
go to ``DIR/wandb/`` (an offline run: ``DIR/wandb/offline-run-*``, uploaded later with
``wandb sync DIR/wandb/offline-run-*``).
The project is ``$WANDB_PROJECT`` or ``pyro-vae``. The run id is recorded in ``DIR/wandb_run.json``: ``--resume``
continues the same W&B run (``wandb.init(id=..., resume="allow")``; offline, the resumed process writes a second
``offline-run-*`` folder with the same id, and ``wandb sync`` puts both into the one run).
"""

from __future__ import annotations

import json
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pyro_vae.atomic import atomic_write_text
from pyro_vae.errors import UserError
from pyro_vae.mlflow_logger import epoch_metrics, flatten

#: The file, in the run directory, that records the W&B run id for ``--resume``.
RUN_RECORD = "wandb_run.json"
#: The project runs go to unless ``WANDB_PROJECT`` names another.
PROJECT = "pyro-vae"


def require_wandb() -> Any:
    """The ``wandb`` module, or a one-line ``UserError`` naming the pip command."""
    try:
        import wandb  # imported here: wandb is an optional extra
    except ImportError:
        raise UserError(
            '--logger wandb needs wandb; pip install "pyro-vae[wandb]" (or pip install wandb), or drop --logger'
        ) from None
    return wandb


def wandb_mode() -> str:
    """``$WANDB_MODE``, else "online" with a login (``WANDB_API_KEY`` or a ``~/.netrc`` entry), else "offline"."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return "online" if netrc.netrc(os.environ.get("NETRC")).authenticators(host) else "offline"
    except (OSError, netrc.NetrcParseError):  # no ~/.netrc: no login
        return "offline"


class WandbLogger:
    """The epochs of the run in ``out`` as one W&B run (see the module docstring).

    ``config``: the run's config as a dict; ``resume``: continue the run recorded in ``out/wandb_run.json``.
    """

    def __init__(self, out: Path, config: dict[str, Any], *, resume: bool = False) -> None:
        wandb = require_wandb()
        self.wandb = wandb
        record_path = out / RUN_RECORD
        run_id = _recorded_id(record_path) if resume else None
        self.mode = wandb_mode()
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", PROJECT),
            dir=str(out),
            id=run_id,  # None: W&B makes one (recorded below)
            resume="allow",
            name=out.resolve().name,
            config=flatten(config),
            mode=self.mode,
            # console="off": training prints its own progress; W&B's copy of the terminal would duplicate it.
            settings=wandb.Settings(console="off", silent=True),
        )
        if run_id is None:
            atomic_write_text(record_path, json.dumps({"run_id": self.run.id}) + "\n")
        self.last_epoch = 0

    def log(self, record: dict[str, Any]) -> None:
        """Log the epoch's numbers at step ``record["epoch"]``."""
        self.last_epoch = int(record["epoch"])
        self.run.log(epoch_metrics(record), step=self.last_epoch)

    def log_figures(self, paths: list[Path]) -> None:
        """The figures as images under ``figures/``, at the last epoch's step."""
        images = {f"figures/{path.stem}": self.wandb.Image(str(path)) for path in paths if path.suffix == ".png"}
        if images:
            self.run.log(images, step=self.last_epoch or None)

    def close(self, status: str = "FINISHED") -> None:
        """Finish the run (exit code 0 when ``status`` is ``FINISHED``, else 1)."""
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


def _recorded_id(path: Path) -> str | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record.get("run_id") if isinstance(record, dict) else None


__all__ = ["PROJECT", "RUN_RECORD", "WandbLogger", "require_wandb", "wandb_mode"]
