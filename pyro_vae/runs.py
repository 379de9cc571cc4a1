"""Run directories: what a training run writes, how it is resumed, and ``load_run`` to get a trained model back.

A run directory (``pyro-vae train --out DIR``) holds ``config.json`` (the ``TrainConfig``), ``metrics.jsonl``
(one record per epoch), ``checkpoint.pt`` (``pyro_vae.checkpoint``: weights, optimizer and RNG states, the
position and the metrics history; the source of truth), ``checkpoint.previous.pt`` (the one saved before it) and
figures. Writers hold the directory's lock (``pyro_vae.lock.run_lock``); readers need none.

What is loaded is checked against what was written: the checkpoint's digest (``load_checkpoint``), its config
against ``config.json``, the data against the digest of the data trained on, the weights against the model built
now, and, on resume, ``metrics.jsonl`` against the checkpoint's history. Each mismatch is one line naming it.
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

from pyro_vae.checkpoint import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    PREVIOUS,
    DamagedCheckpoint,
    content_digest,
    load_checkpoint,
    steps_into_epoch,
    write_bytes_atomic,
    write_jsonl,
)
from pyro_vae.config import TrainConfig, absolute_paths
from pyro_vae.data import VAEData
from pyro_vae.errors import UserError
from pyro_vae.models import VAEModel
from pyro_vae.pairs import as_pair, check_pair_run, discover_parameters
from pyro_vae.plugins import require_plugins
from pyro_vae.registry import build

#: Options that may differ between a checkpoint's config and the config given to ``train(resume=True)``.
RESUMABLE_CHANGES = ("epochs", "device", "data_dir", "download", "threads", "checkpoint_seconds", "eval_every")
#: Files made from a run's checkpoint by other commands and by ``train``'s end; a resume or ``--overwrite``
#: removes them before it changes the checkpoint, so none is ever left describing a checkpoint that is gone.
DERIVED_FILES = (
    "evaluation.json",  # pyro-vae evaluate
    "estimators.csv",  # pyro-vae compare-estimators
    "estimators.json",
    "snr_vs_k.png",
    "reconstructions.png",  # pyro_vae.figures
    "samples.png",
    "curves.png",
    "latent.png",
    "manifold.png",
)
#: What to do when a loaded file does not match the run.
_NEW_RUN = "train a new run (another --out, or --overwrite)"


@dataclass
class TrainResult:
    """What ``train`` returns: the run's config, metric records (one per epoch), model, guide and data."""

    config: TrainConfig
    metrics: list[dict[str, Any]]
    model: torch.nn.Module
    guide: torch.nn.Module
    data: VAEData
    out_dir: Path
    figures: list[Path] = field(default_factory=list)


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


def read_config(text: str) -> TrainConfig:
    """The ``TrainConfig`` in ``text`` (``config.json`` or a checkpoint's), after importing the plugins it records
    (``pyro_vae.plugins.require_plugins``, trusted ones only): reading a config never imports code by itself."""
    require_plugins(TrainConfig.recorded_plugins(text))
    return TrainConfig.from_json(text)


def load_run(
    out_dir: str | Path,
    device: str | torch.device = "cpu",
    with_data: bool = True,
    model: Any = None,
    guide: Any = None,
) -> Run:
    """Load the run in ``out_dir`` (written by ``pyro-vae train --out DIR`` / ``train(config, DIR)``).

    Rebuilds the model and guide from the stored config with ``pyro_vae.build`` (first importing the plugins the
    run recorded, ``pyro_vae.plugins``), loads the checkpoint's weights, moves them to ``device`` and, when
    ``with_data``, loads the data set the run used (without downloading). Clears Pyro's global parameter store
    so that stale parameters of the same names cannot shadow the loaded ones. A run of your own model and guide
    (``train(..., model=, guide=)``) needs them again: ``load_run(DIR, model=m, guide=g)`` loads the weights
    into their Pyro parameters (``pyro_vae.pairs``).

    >>> run = load_run("runs/quickstart/with_kl")
    >>> run.model, run.guide, run.data.test_x_eval, run.config.model.z_dim
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise UserError(f"run directory {out} does not exist")
    state = read_checkpoint(out)
    config = read_config(state["config"])
    check_config_file(out, config)
    pyro.clear_param_store()
    check_pair_run(config.plugins, model, guide, out)
    if model is None:
        model, guide = build(config.model)
    else:  # the user's own pair: run it once on a dummy batch to create its parameters, then load them
        model, guide = as_pair(model, guide)
        discover_parameters(model, guide, torch.zeros(1, *config.model.x_shape))
    load_weights(model, guide, state, out)
    model.to(device).eval()
    guide.to(device).eval()
    data = None
    if with_data:
        data = config.load_data(device, download=False)
        data.match_shape(config.model.x_shape)  # before the digest, as in training (TrainConfig.with_data_shape)
        check_data(out, state, data)
        data.prepare(getattr(model, "likelihood", model))  # a pair of your own may have none (pyro_vae.pairs)
    return Run(
        config, model, guide, data, int(state["epoch"]), json.loads(state["metrics"]), out, steps_into_epoch(state)
    )


def read_checkpoint(out: Path) -> dict[str, Any]:
    """``load_checkpoint(out / CHECKPOINT)``; if it is missing or damaged and the previous checkpoint is intact,
    the message offers that one (``pyro-vae train --resume --from-previous``)."""
    try:
        return load_checkpoint(out / CHECKPOINT)
    except DamagedCheckpoint as err:
        try:
            previous = load_checkpoint(out / PREVIOUS)
        except DamagedCheckpoint:
            raise err from None
        at = _position(previous)
        raise DamagedCheckpoint(
            err.what,
            f"the previous checkpoint, {out / PREVIOUS} ({at}), is intact: pyro-vae train --out {out} --resume "
            "--from-previous goes on from it",
        ) from None


def _position(state: dict[str, Any]) -> str:
    step = steps_into_epoch(state)
    return f"step {step} of epoch {int(state['epoch']) + 1}" if step else f"epoch {int(state['epoch'])}"


def restore_previous(out_dir: str | Path) -> dict[str, Any]:
    """Go back to the previous checkpoint (``--from-previous``): it replaces ``checkpoint.pt`` and
    ``metrics.jsonl`` is rewritten from its history; return it. The caller holds the run's lock."""
    out = Path(out_dir)
    try:
        state = load_checkpoint(out / PREVIOUS)
    except DamagedCheckpoint as err:
        raise UserError(
            f"--from-previous: {err.what}, so there is no previous checkpoint to go back to; restore a good copy of "
            f"the run, or {_NEW_RUN}"
        ) from None
    write_bytes_atomic(out / CHECKPOINT, (out / PREVIOUS).read_bytes())
    write_jsonl(out / METRICS, json.loads(state["metrics"]))
    return state


def load_weights(model: torch.nn.Module, guide: torch.nn.Module, state: dict[str, Any], out: Path) -> None:
    """Load the checkpoint's weights into the model and guide built now; one line if they do not fit (the
    code of a component changed since the run was written)."""
    for name, module in (("model", model), ("guide", guide)):
        try:
            module.load_state_dict(state[name])
        except (RuntimeError, KeyError, TypeError) as err:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(err).__name__)
            raise UserError(
                f"the {name} built now does not fit the weights in {out / CHECKPOINT} ({detail[:200]}): a "
                f"component's code changed since the run was written; restore that code, or {_NEW_RUN}"
            ) from None


def data_digest(data: VAEData) -> str:
    """SHA-256 of a data set's examples and labels (``content_digest``), on whatever device they are."""
    return content_digest([data.train_x, data.test_x, data.train_y, data.test_y])


def check_data(out: Path, state: dict[str, Any], data: VAEData) -> None:
    """One line if ``data`` are not the data the checkpoint was trained on (checkpoints before format 4 do not
    record them, and pass)."""
    then = state.get("data_digest")
    if then is None:
        return
    now = data_digest(data)
    if now != then:
        raise UserError(
            f"the data set {data.name} differs from the one the run in {out} was trained on (SHA-256 of its "
            f"examples and labels {now[:12]}... now, {str(then)[:12]}... then); restore those data (see --dataset, "
            f"--data-dir, --labels), or {_NEW_RUN}"
        )


def check_config_file(out: Path, saved: TrainConfig) -> None:
    """One line if ``config.json`` and the checkpoint describe different runs (beyond ``RESUMABLE_CHANGES``)."""
    path = out / CONFIG
    if not path.is_file():
        return
    try:
        on_disk = read_config(path.read_text())
    except (ValueError, TypeError, KeyError) as err:
        raise UserError(
            f"{path} is not a run's config ({str(err).splitlines()[0]}); restore it, or {_NEW_RUN}"
        ) from None
    diffs = [d for d in on_disk.differences(saved) if d not in RESUMABLE_CHANGES]
    if diffs:
        raise UserError(
            f"{path} and {out / CHECKPOINT} describe different runs ({', '.join(diffs)} differ): one was replaced "
            f"after the run wrote it; restore the run's own copy, or {_NEW_RUN}"
        )


def check_records(out: Path, state: dict[str, Any]) -> None:
    """For ``--resume``: ``metrics.jsonl`` must be the checkpoint's history or a beginning of it (the line of the
    epoch the checkpoint was saved for may be missing after a crash); else the checkpoint is not the one that
    wrote it, and resuming would silently rewrite the run's records."""
    path = out / METRICS
    if not path.is_file():
        return
    lines = path.read_text().split("\n")[:-1]  # a last line without its newline is a torn append: rebuilt
    history = json.loads(state["metrics"])
    fix = (
        f"to go on from this checkpoint deliberately, move {path} aside (--resume rebuilds it from the checkpoint), "
        f"or {_NEW_RUN}"
    )
    if len(lines) > len(history):
        raise UserError(
            f"--resume: {path} records {len(lines)} epochs but {out / CHECKPOINT} holds {_position(state)}: the "
            f"checkpoint is older than the run's records (replaced after it was written?); {fix}"
        )
    for epoch, (line, record) in enumerate(zip(lines, history, strict=False), start=1):
        try:
            same = json.loads(line) == record
        except json.JSONDecodeError:
            same = False
        if not same:
            raise UserError(
                f"--resume: epoch {epoch} in {path} differs from the record in {out / CHECKPOINT}: the checkpoint "
                f"is not the one that wrote these records; {fix}"
            )


def remove_derived(out: Path) -> None:
    """Remove ``DERIVED_FILES`` (the caller holds the lock and is about to change the checkpoint)."""
    for name in DERIVED_FILES:
        (out / name).unlink(missing_ok=True)


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
            f"{', '.join(RESUMABLE_CHANGES)} may change when resuming; to train with the new options, {_NEW_RUN}"
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
    state = read_checkpoint(Path(out_dir))
    d = read_config(state["config"]).to_dict()
    d["model"].update(model or {})
    d.update(absolute_paths(train or {}))
    return TrainConfig.from_dict(d), state


def check_run(
    out: Path, config: TrainConfig, resume: bool, overwrite: bool, state: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Check that ``config`` may be trained into ``out`` (its checkpoint continues it, or there is none, or
    ``overwrite``); return the checkpoint to resume from (``state`` if already loaded), or None. Writes nothing.

    A resume is refused when the checkpoint is damaged, when its config differs from ``config`` (beyond
    ``RESUMABLE_CHANGES``) or from ``config.json``, or when ``metrics.jsonl`` is not its history."""
    path = out / CHECKPOINT
    if not resume:
        if path.exists() and not overwrite:
            raise UserError(
                f"{out} already holds a run ({CHECKPOINT}); pass --resume to continue it, --overwrite to replace it, "
                "or choose another --out"
            )
        return None
    state = state if state is not None else read_checkpoint(out)
    saved = read_config(state["config"])
    check_config_file(out, saved)
    check_records(out, state)
    if config.model.x_shape is None:  # to be taken from the data: the saved run's, if the data agree
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, x_shape=saved.model.x_shape))
    check_resume(saved, config, int(state["epoch"]), steps_into_epoch(state), path)
    return state


def nothing_to_do(state: dict[str, Any], config: TrainConfig) -> bool:
    """True when resuming ``state`` up to ``config.epochs`` would train nothing (it is there already)."""
    return not steps_into_epoch(state) and int(state["epoch"]) >= config.epochs
