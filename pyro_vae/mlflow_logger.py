"""``--logger mlflow``: the run's config, per-epoch metrics and figures in an MLflow run.

Written with MLflow's own client (``mlflow.tracking.MlflowClient``; the ``mlflow-skinny`` package suffices:
``pip install -e ".[mlflow]"``):

- params: the run's ``TrainConfig`` flattened (``model.z_dim``, ``elbo_options.num_particles``, ...);
- metrics: every number of a ``metrics.jsonl`` record (``train_loss``, ``test_elbo``, ``test_recon``,
  ``test_kl``, ``beta``, ``lr``), with the epoch as MLflow's ``step``;
- artifacts: the figures, under ``figures/``.

Where: the tracking URI given (``--mlflow-uri``, ``train(..., mlflow_uri=...)``), else the ``MLFLOW_TRACKING_URI``
environment variable, else a file store in the run directory, ``DIR/mlruns``. The run's id and URI are recorded in
``DIR/mlflow_run.json``: ``--resume`` continues that same MLflow run (the epochs a crash made the resumed process
train again are not logged twice: on CPU they are the same numbers).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pyro_vae.atomic import atomic_write_text
from pyro_vae.errors import UserError

#: The file, in the run directory, that records the MLflow run (its id and tracking URI) for ``--resume``.
RUN_RECORD = "mlflow_run.json"
#: The default store, in the run directory.
STORE = "mlruns"
#: The experiment runs go to unless ``MLFLOW_EXPERIMENT_NAME`` names another.
EXPERIMENT = "pyro-vae"
#: MLflow refuses longer parameter values (``MAX_PARAM_VAL_LENGTH`` is 6000 in MLflow 2.x).
MAX_PARAM_LENGTH = 6000


def require_mlflow() -> Any:
    """The ``mlflow.tracking`` module, or a one-line ``UserError`` naming the pip command."""
    try:
        from mlflow import tracking  # imported here: mlflow is an optional extra
    except ImportError:
        raise UserError(
            '--logger mlflow needs MLflow; pip install "pyro-vae[mlflow]" (or pip install mlflow-skinny), '
            "or drop --logger"
        ) from None
    return tracking


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config dict as flat ``{"a.b": "value"}`` strings (MLflow and W&B params are flat key-value pairs)."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def epoch_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a ``metrics.jsonl`` record, by their key (the epoch is the step, not a metric)."""
    return {
        key: float(value)
        for key, value in record.items()
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def tracking_uri(out: Path, given: str | None) -> str:
    """``given``, else ``$MLFLOW_TRACKING_URI``, else the file store ``out/mlruns`` (as a ``file:`` URI)."""
    return given or os.environ.get("MLFLOW_TRACKING_URI") or (out / STORE).resolve().as_uri()


class MLflowLogger:
    """The epochs of the run in ``out`` as one MLflow run (see the module docstring).

    ``config``: the run's config as a dict (logged as params); ``resume``: continue the run recorded in
    ``out/mlflow_run.json`` (else a new run is started and recorded there); ``uri``: the tracking URI
    (``tracking_uri``).
    """

    def __init__(
        self,
        out: Path,
        config: dict[str, Any],
        *,
        resume: bool = False,
        uri: str | None = None,
    ) -> None:
        tracking = require_mlflow()
        from mlflow.exceptions import MlflowException

        self.uri = tracking_uri(out, uri)
        if urlparse(self.uri).scheme in ("", "file") and "MLFLOW_ALLOW_FILE_STORE" not in os.environ:
            # MLflow >= 3.7 refuses its file store unless this is set; the file store is the one backend that needs
            # no database (mlflow-skinny has no SQL store), and is what a run directory of its own wants.
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        self.record_path = out / RUN_RECORD
        try:
            self.client = tracking.MlflowClient(tracking_uri=self.uri)
            self._open(out, flatten(config), _read_record(self.record_path) if resume else None)
        except (MlflowException, OSError) as err:  # a bad URI, a server that does not answer: one line
            raise UserError(f"MLflow at {self.uri}: {str(err).strip().splitlines()[0]}") from None

    def _open(self, out: Path, params: dict[str, str], recorded: dict[str, str] | None) -> None:
        """Continue the recorded run when it is in this store, else start one and record it."""
        if recorded is not None and recorded["tracking_uri"] == self.uri:
            self.run_id = recorded["run_id"]
            self._continue(params)
            self.logged_up_to = self._last_logged_epoch()
        else:
            self.run_id = self._start(out, params)
            self.logged_up_to = 0
            atomic_write_text(self.record_path, json.dumps({"run_id": self.run_id, "tracking_uri": self.uri}) + "\n")

    def _start(self, out: Path, params: dict[str, str]) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        run_id = self.client.create_run(experiment_id, run_name=out.resolve().name).info.run_id
        self._log_params(run_id, params)
        return run_id

    def _continue(self, params: dict[str, str]) -> None:
        """Reopen the recorded run. Params are immutable in MLflow: new keys are logged, and an option changed on
        resume (``--epochs``, ...) is recorded as the tag ``resumed.KEY`` (its latest value)."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(self.run_id)
        except MlflowException as err:
            raise UserError(
                f"the MLflow run {self.run_id} recorded in {self.record_path} is not in {self.uri} "
                f"({str(err).splitlines()[0]}); remove {self.record_path.name} to start a new MLflow run"
            ) from None
        self.client.update_run(self.run_id, status="RUNNING")
        old = run.data.params
        self._log_params(self.run_id, {k: v for k, v in params.items() if k not in old})
        for key, value in params.items():
            if key in old and old[key] != value[:MAX_PARAM_LENGTH]:
                self.client.set_tag(self.run_id, f"resumed.{key}", value[:MAX_PARAM_LENGTH])

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(key, value[:MAX_PARAM_LENGTH]) for key, value in sorted(params.items())]
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params at a time
            self.client.log_batch(run_id, params=items[i : i + 100])

    def _last_logged_epoch(self) -> int:
        history = self.client.get_metric_history(self.run_id, "train_loss")
        return max((m.step for m in history), default=0)

    def log(self, record: dict[str, Any]) -> None:
        """Log the epoch's numbers at step ``record["epoch"]`` (once: an epoch logged before a crash is skipped)."""
        from mlflow.entities import Metric

        epoch = int(record["epoch"])
        if epoch <= self.logged_up_to:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, epoch) for k, v in epoch_metrics(record).items() if math.isfinite(v)]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.logged_up_to = epoch

    def log_figures(self, paths: list[Path]) -> None:
        """The figure files as artifacts under ``figures/``."""
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path="figures")

    def close(self, status: str = "FINISHED") -> None:
        """End the run: ``FINISHED``, ``KILLED`` (interrupted; ``--resume`` continues it) or ``FAILED``."""
        self.client.set_terminated(self.run_id, status)


def _read_record(path: Path) -> dict[str, str] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # no record (a run trained without --logger mlflow until now): a new MLflow run
    if not isinstance(record, dict) or not {"run_id", "tracking_uri"} <= record.keys():
        return None
    return record


__all__ = ["EXPERIMENT", "RUN_RECORD", "STORE", "MLflowLogger", "flatten", "require_mlflow", "tracking_uri"]
