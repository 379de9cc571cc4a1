"""Run directories: what a training run writes, how it is resumed, and ``load_run`` to get a trained model back.

A run directory (``pyro-vae train --out DIR``) holds ``config.json`` (the ``TrainConfig``), ``metrics.jsonl``
(one record per epoch), ``checkpoint.pt`` (``pyro_vae.checkpoint``: weights, optimizer and RNG states, the
position and the metrics history; the source of truth) and figures.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae.checkpoint import CHECKPOINT, load_checkpoint, steps_into_epoch
from pyro_vae.config import TrainConfig, absolute_paths
from pyro_vae.data import VAEData
from pyro_vae.errors import UserError
from pyro_vae.models import VAEModel
from pyro_vae.registry import build

#: Options that may differ between a checkpoint's config and the config given to ``train(resume=True)``.
RESUMABLE_CHANGES = ("epochs", "device", "data_dir", "download", "threads")


@dataclass
class Run:
    """A trained run, as ``load_run`` returns it.

    Attributes:
        config: the run's ``TrainConfig``.
        model, guide: the Pyro model and guide with the checkpoint's weights, on ``device``, in eval mode.
        data: the ``VAEData`` the run was trained on (prepared for its likelihood), or None if not loaded.
        epoch: the number of completed epochs in the checkpoint.
        metrics: the per-epoch metric records up to ``epoch``.
        out_dir: the run directory.
        step: training steps done in the next epoch (0 unless the run was stopped mid-epoch; the weights
            are then those after that step).
    """

    config: TrainConfig
    model: VAEModel
    guide: torch.nn.Module
    data: VAEData | None
    epoch: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path = Path(".")
    step: int = 0


def load_run(out_dir: str | Path, device: str | torch.device = "cpu", with_data: bool = True) -> Run:
    """Load the run in ``out_dir`` (written by ``pyro-vae train --out DIR`` / ``train(config, DIR)``).

    Rebuilds the model and guide from the stored config with ``pyro_vae.build``, loads the checkpoint's
    weights, moves them to ``device`` and, when ``with_data``, loads the data set the run used (without
    downloading). Clears Pyro's global parameter store so that stale parameters of the same names
    cannot shadow the loaded ones.

    >>> run = load_run("runs/quickstart/with_kl")
    >>> run.model, run.guide, run.data.test_x_eval, run.config.model.z_dim
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise UserError(f"run directory {out} does not exist")
    state = load_checkpoint(out / CHECKPOINT)
    config = TrainConfig.from_json(state["config"])
    pyro.clear_param_store()
    model, guide = build(config.model)
    model.load_state_dict(state["model"])
    guide.load_state_dict(state["guide"])
    model.to(device).eval()
    guide.to(device).eval()
    data = None
    if with_data:
        data = config.load_data(device, download=False)
        data.match_shape(config.model.x_shape)
        data.prepare(model.likelihood)
    return Run(
        config, model, guide, data, int(state["epoch"]), json.loads(state["metrics"]), out, steps_into_epoch(state)
    )


def prepare_run_dir(out: Path) -> None:
    """Create the run directory ``out`` if needed and check that files can be written in it (one-line errors)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"the run directory {out} is an existing file; choose a directory path for --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        # The real test of writability (os.access says yes to root even where writing fails).
        tempfile.TemporaryFile(dir=out).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(
            f"cannot write to the run directory {out} ({reason}); choose an --out you can write to"
        ) from None


def check_resume(saved: TrainConfig, given: TrainConfig, epoch: int, step: int, path: Path) -> None:
    """One-line errors for a resume that would not continue the saved run (``RESUMABLE_CHANGES`` may differ)."""
    diffs = [d for d in saved.differences(given) if d not in RESUMABLE_CHANGES]
    if diffs:
        raise UserError(
            f"--resume: {', '.join(diffs)} differ(s) from the run in {path.parent}; only "
            f"{', '.join(RESUMABLE_CHANGES)} may change when resuming"
        )
    if step and given.epochs <= epoch:
        raise UserError(
            f"--resume: the checkpoint is at step {step} of epoch {epoch + 1}; ask for --epochs >= {epoch + 1}"
        )
    if given.epochs < epoch:
        raise UserError(f"--resume: the checkpoint is at epoch {epoch}; ask for --epochs >= {epoch}")


def resume_config(
    out_dir: str | Path, model: dict[str, Any] | None = None, train: dict[str, Any] | None = None
) -> tuple[TrainConfig, dict[str, Any]]:
    """(the stored config with the options given now applied, the checkpoint): what ``--resume`` continues.

    The checkpoint is read once; pass it on as ``train(..., state=...)``.
    """
    state = load_checkpoint(Path(out_dir) / CHECKPOINT)
    d = TrainConfig.from_json(state["config"]).to_dict()
    d["model"].update(model or {})
    d.update(absolute_paths(train or {}))
    return TrainConfig.from_dict(d), state


def check_run(
    out: Path, config: TrainConfig, resume: bool, overwrite: bool, state: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Check that ``config`` may be trained into ``out`` (its checkpoint continues it, or there is none, or
    ``overwrite``); return the checkpoint to resume from (``state`` if already loaded), or None. Writes nothing."""
    path = out / CHECKPOINT
    if not resume:
        if path.exists() and not overwrite:
            raise UserError(
                f"{out} already holds a run ({CHECKPOINT}); pass --resume to continue it, --overwrite to replace it, "
                "or choose another --out"
            )
        return None
    state = state if state is not None else load_checkpoint(path)
    saved = TrainConfig.from_json(state["config"])
    if config.model.x_shape is None:  # to be taken from the data: the saved run's, if the data agree
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, x_shape=saved.model.x_shape))
    check_resume(saved, config, int(state["epoch"]), steps_into_epoch(state), path)
    return state
