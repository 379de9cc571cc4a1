"""Training a VAE by SVI: ``TrainConfig`` (everything a run needs, round-tripping to JSON) and ``train``.

>>> from pyro_vae import VAEConfig
>>> from pyro_vae.train import TrainConfig, train
>>> config = TrainConfig(model=VAEConfig(x_dim=64, z_dim=2, hidden=(128,)), dataset="digits", epochs=20)
>>> result = train(config, "runs/digits")          # writes DIR/checkpoint.pt, metrics.jsonl, figures
>>> result.metrics[-1]["test_elbo"]                 # nats per test example
>>> train(TrainConfig.from_json(...epochs=40...), "runs/digits", resume=True)   # continues exactly

Each epoch minimises the beta-weighted negative ELBO, E_q[-log p(x|z)] + beta_t KL(q || p) (eq. 28 with
a weighted KL; ``BetaScaled`` scales the latent sites of model and guide), where beta_t rises linearly
from 0 to ``beta`` over ``kl_warmup`` epochs (Bowman et al. 2016), with one torch Adam over all
parameters (``TrainStep``). After each epoch the test set's true ELBO (beta = 1) and its reconstruction
and KL terms are evaluated (``pyro_vae.elbo_terms``), the checkpoint is saved atomically, and the
record is appended to ``metrics.jsonl``. Ctrl-C or SIGTERM lets the step in progress finish, saves a
mid-epoch checkpoint and stops (``TrainingInterrupted``); ``--resume`` goes on from that very step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import ELBO, TraceMeanField_ELBO
from tqdm.auto import tqdm

from pyro_vae.beta import BetaScaled, warmup_beta
from pyro_vae.checkpoint import (
    CHECKPOINT,
    CONFIG,
    FORMAT_VERSION,
    METRICS,
    append_jsonl,
    atomic_write_text,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    steps_into_epoch,
    write_jsonl,
)
from pyro_vae.config import VAEConfig
from pyro_vae.data import VAEData, load_data, minibatches
from pyro_vae.elbo_terms import elbo_terms
from pyro_vae.errors import UserError
from pyro_vae.interrupts import DeferredInterrupts
from pyro_vae.kl_check import MONTE_CARLO, describe, kl_kinds
from pyro_vae.registry import build
from pyro_vae.step import TrainStep, make_optimizer, parameters_of

#: Options that may differ between a checkpoint's config and the config given to ``train(resume=True)``.
RESUMABLE_CHANGES = ("epochs", "device", "data_dir", "download", "threads")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class TrainConfig:
    """Everything a training run needs; ``to_json`` / ``from_json`` round-trip it (``DIR/config.json``).

    Fields:
        model: the ``VAEConfig`` (its x_dim must match the data set's).
        dataset: "digits" (default, offline), "mnist", "fashion-mnist", or a path to a .npy / .pt array.
        data_dir: where mnist / fashion-mnist are downloaded (default: a per-user cache dir).
        labels: a .npy / .pt file of integer labels for your own data set (used to colour plots).
        elbo: the estimator, a name in ``pyro_vae.estimators.ESTIMATORS`` ("meanfield" = analytic KL).
        num_particles: samples of z per example in each ELBO estimate.
        beta: weight of the KL term (1 = the ELBO; 0 = no KL, a plain autoencoder with noise).
        kl_warmup: epochs over which beta rises linearly from 0 to beta (0 = no warm-up).
        epochs: number of passes over the training set.
        batch_size: examples per gradient step.
        lr: Adam's learning rate.
        clip_norm: clip the gradient's global 2-norm to this value (None = no clipping).
        seed: seeds torch, numpy and Python's random (model init, shuffling, binarisation, sampling).
        device: "auto" (cuda when available), "cpu", "cuda" or "cuda:N".
        require_analytic_kl: refuse to train if a meanfield ELBO would estimate any KL by Monte Carlo.
        eval_samples: samples of z per test example when estimating the test ELBO.
        threads: torch CPU threads (None = torch's default); small models are often fastest with 1.
        download: download mnist / fashion-mnist when missing.
    """

    model: VAEConfig
    dataset: str = "digits"
    data_dir: str | None = None
    labels: str | None = None
    elbo: str = "meanfield"
    num_particles: int = 1
    beta: float = 1.0
    kl_warmup: int = 0
    epochs: int = 100
    batch_size: int = 128
    lr: float = 5e-3
    clip_norm: float | None = None
    seed: int = 0
    device: str = "auto"
    require_analytic_kl: bool = False
    eval_samples: int = 1
    threads: int | None = None
    download: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = VAEConfig.from_dict(self.model)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` with a one-line message for any value a run cannot use."""
        from pyro_vae.estimators import ESTIMATORS

        if not isinstance(self.model, VAEConfig):
            raise ValueError(f"model must be a VAEConfig, got {type(self.model).__name__}")
        self.model.validate()
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(
                f"dataset must be a name (digits, mnist, fashion-mnist) or a file path, got {self.dataset!r}"
            )
        for name in ("data_dir", "labels"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a path, got {value!r}")
        if self.elbo not in ESTIMATORS:
            raise ValueError(f"unknown elbo {self.elbo!r}; choose one of: {', '.join(ESTIMATORS)}")
        for name in ("num_particles", "epochs", "batch_size", "eval_samples"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not _is_int(self.kl_warmup) or self.kl_warmup < 0:
            raise ValueError(f"kl_warmup must be an integer number of epochs >= 0, got {self.kl_warmup!r}")
        if not _is_number(self.beta) or self.beta < 0:
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta!r}")
        if not _is_number(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.clip_norm is not None and (not _is_number(self.clip_norm) or self.clip_norm <= 0):
            raise ValueError(f"clip_norm must be a finite number > 0 (or None for no clipping), got {self.clip_norm!r}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit())
        ):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        for name in ("require_analytic_kl", "download"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            raise ValueError(f"threads must be an integer >= 1 (or None for torch's default), got {self.threads!r}")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        if not isinstance(d, dict):
            raise ValueError(f"a TrainConfig must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        if "model" not in d:
            raise ValueError("a TrainConfig needs a model (a VAEConfig)")
        return cls(**{**d, "model": VAEConfig.from_dict(d["model"])})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def for_data(cls, data: VAEData, **options: Any) -> TrainConfig:
        """A config for ``data``: VAEConfig fields (z_dim, hidden, prior, ...) and training fields by name.

        x_dim comes from the data. ``TrainConfig.for_data(load_data("digits"), z_dim=2, epochs=20)``.
        """
        model_fields = {f.name for f in dataclasses.fields(VAEConfig)} - {"x_dim"}
        model_opts = {k: v for k, v in options.items() if k in model_fields}
        train_opts = {k: v for k, v in options.items() if k not in model_fields}
        return cls(model=VAEConfig(x_dim=data.x_dim, **model_opts), **train_opts)

    def differences(self, other: TrainConfig) -> list[str]:
        """Names of the fields (``model.<field>`` for the VAEConfig) whose values differ."""
        a, b = self.to_dict(), other.to_dict()
        diffs = [f"model.{k}" for k in a["model"] if a["model"][k] != b["model"].get(k)]
        return diffs + [k for k in a if k != "model" and a[k] != b[k]]


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


def resolve_device(device: str) -> torch.device:
    """ "auto" -> cuda if available, else cpu; a one-line error for cuda without a GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device} asked for but CUDA is not available here; use --device cpu (or auto)")
    return torch.device(device)


def make_training_elbo(name: str, num_particles: int) -> ELBO:
    """``ESTIMATORS[name](num_particles=K)`` with max_plate_nesting = 1 (the model's one "data" plate).

    Fixing the nesting matters for exact resumption: otherwise Pyro guesses it at the first call by
    running the model once, which draws random numbers at a different point of a resumed run.
    """
    from pyro_vae.estimators import make_elbo

    try:
        return make_elbo(name, num_particles=num_particles, max_plate_nesting=1)
    except UserError:
        # A factory without that option (an unknown name raises again just below).
        elbo = make_elbo(name, num_particles=num_particles)
    if getattr(elbo, "max_plate_nesting", None) == float("inf"):
        # Pyro's vectorised particles take one more plate dimension, left of the model's.
        elbo.max_plate_nesting = 1 + int(bool(getattr(elbo, "vectorize_particles", False)))
    return elbo


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


def _check_resume(saved: TrainConfig, given: TrainConfig, epoch: int, step: int, path: Path) -> None:
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


def train(
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    data: VAEData | None = None,
    overwrite: bool = False,
    figures: bool = True,
) -> TrainResult:
    """Train the VAE described by ``config``, writing the run to ``out_dir``; return a ``TrainResult``.

    Args:
        config: the run's ``TrainConfig``.
        out_dir: the run directory: ``config.json``, ``metrics.jsonl``, ``checkpoint.pt``, figures.
        resume: continue the run in ``out_dir`` from its checkpoint up to ``config.epochs``. On CPU the
            metrics equal an uninterrupted run's exactly (model, optimizer and RNG states are restored;
            not guaranteed for the jit-* estimators, whose compilation draws random numbers).
        progress: show a tqdm bar and print one-line status messages (to stderr).
        data: an already loaded data set (else ``load_data(config.dataset, ...)``).
        overwrite: start afresh even if ``out_dir`` holds a checkpoint (else that is an error).
        figures: write the figures of ``pyro_vae.figures`` at the end.

    Raises:
        UserError (one line): bad data, an unwritable ``out_dir``, an unresumable config, or a non-finite or
        diverging loss (``NonFiniteLossError``, naming the epoch and step; the last good checkpoint stays).
        TrainingInterrupted (a KeyboardInterrupt) on Ctrl-C or SIGTERM (in the main thread): the step in
        progress finishes, the checkpoint is saved after it, and ``resume=True`` goes on from the next
        step with the same result as an uninterrupted run. A second Ctrl-C stops at once, keeping the
        last completed epoch's checkpoint.

    Side effects: clears Pyro's global parameter store and seeds the global RNGs (``pyro.set_rng_seed``).
    """
    config.validate()
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT
    state: dict[str, Any] | None = None
    if resume:
        state = load_checkpoint(ckpt_path)
        saved = TrainConfig.from_json(state["config"])
        _check_resume(saved, config, int(state["epoch"]), steps_into_epoch(state), ckpt_path)
    elif ckpt_path.exists() and not overwrite:
        raise UserError(
            f"{out} already holds a run ({CHECKPOINT}); pass --resume to continue it or choose another --out"
        )
    prepare_run_dir(out)

    def say(message: str) -> None:
        if progress:
            tqdm.write(message, file=sys.stderr)

    device = resolve_device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if data is None:
        data = load_data(
            config.dataset, data_dir=config.data_dir, labels=config.labels, device=device, download=config.download
        )
    else:
        data.to(device)
    if config.model.x_dim != data.x_dim:
        raise UserError(
            f"model x_dim is {config.model.x_dim} but the {data.name} data have {data.x_dim} values per example"
        )

    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    model, guide = build(config.model)
    model.to(device)
    guide.to(device)
    data.prepare(model.likelihood)
    if config.model.prior_init_from_data:
        init = getattr(model.prior, "init_from_data", None)
        if init is None:
            raise UserError(
                f"the {config.model.prior} prior cannot start from data (it has no init_from_data); "
                "drop --prior-init-from-data"
            )
        init(data.train_x)  # on the seeded global generator, so the same seed gives the same start
    params = parameters_of(model, guide)
    optimizer = make_optimizer(params, config.lr)  # one fused Adam (benchmarks/step_time.py)
    scaled = BetaScaled(model, guide, config.beta)
    elbo = make_training_elbo(config.elbo, config.num_particles)

    # kl_kinds samples from the guide: keep that off the training random stream.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        kinds = kl_kinds(model, guide, data.test_x_eval[: config.batch_size])
    meanfield = isinstance(elbo, TraceMeanField_ELBO)
    if meanfield:
        say(describe(kinds))
    from pyro_vae.estimators import MULTI_PARTICLE_BOUNDS

    if config.elbo in MULTI_PARTICLE_BOUNDS and config.num_particles == 1:
        say(f"note: --elbo {config.elbo} with --num-particles 1 is the standard ELBO; its bound tightens with K > 1")
    if config.require_analytic_kl:
        if not meanfield:
            raise UserError(
                f"--require-analytic-kl needs a meanfield-type --elbo; {config.elbo!r} always estimates the KL"
            )
        mc = [name for name, kind in kinds.items() if kind == MONTE_CARLO]
        if mc:
            raise UserError(
                "--require-analytic-kl: no kl_divergence is registered for the guide and prior at site(s) "
                f"{', '.join(mc)}, so the KL would be a Monte Carlo estimate; register one "
                "(torch.distributions.register_kl) or drop the flag"
            )

    history: list[dict[str, Any]] = []
    start = 0
    partial: dict[str, Any] | None = None  # a mid-epoch checkpoint's record of the epoch in progress
    metrics_path = out / METRICS
    if state is not None:
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
        optimizer.load_state_dict(state["optimizer"])
        history = json.loads(state["metrics"])
        start = int(state["epoch"])
        # The checkpoint is the source of truth: drop metric lines written after it (or restore missing ones).
        write_jsonl(metrics_path, history)
        set_rng_state(state["rng"])
        partial = state.get("partial")
        where = f"step {partial['step']} of epoch {start + 1}" if partial else f"epoch {start}"
        say(f"resuming {out} at {where} of {config.epochs}")
    else:
        # Only now, with everything checked, replace an old run (--overwrite): never a new config beside an
        # old checkpoint, which --resume would take for this run.
        ckpt_path.unlink(missing_ok=True)
        atomic_write_text(out / CONFIG, config.to_json() + "\n")
        write_jsonl(metrics_path, [])

    # fast: validation on the first step only, a compiled meanfield objective (same losses; pyro_vae/step.py).
    step = TrainStep(scaled.model, scaled.guide, elbo, optimizer, params, config.clip_norm, fast=True)
    n = data.train_x.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    bar = tqdm(
        total=config.epochs * steps_per_epoch,
        initial=start * steps_per_epoch + (partial["step"] if partial else 0),
        desc=f"train {out.name}",
        unit="step",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    # What the checkpoint on disk holds: completed epochs and steps into the next one.
    held_epoch, held_step = start, (int(partial["step"]) if partial else 0)
    written = state is not None

    def held() -> str:
        if not written:
            return "no checkpoint was written"
        at = f"step {held_step} of epoch {held_epoch + 1}" if held_step else f"epoch {held_epoch}"
        return f"the checkpoint of {at} is kept in {ckpt_path}"

    scale: float | None = None  # |loss per example| of the first step of this process

    def diverged(what: str, epoch: int, step: int) -> NonFiniteLossError:
        return NonFiniteLossError(f"{what} at epoch {epoch}, step {step}; {held()}; try a smaller --lr or --clip-norm")

    def checkpoint(epoch: int, epoch_partial: dict[str, Any] | None = None) -> None:
        record = {
            "format": FORMAT_VERSION,
            "epoch": epoch,
            "config": config.to_json(),
            "model": model.state_dict(),
            "guide": guide.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(),
            "metrics": json.dumps(history),
        }
        if epoch_partial is not None:
            record["partial"] = epoch_partial
        save_checkpoint(record, ckpt_path)

    try:
        with DeferredInterrupts() as stop:
            for epoch in range(start, config.epochs):
                scaled.beta = warmup_beta(epoch, config.beta, config.kl_warmup)
                model.train()
                guide.train()
                if partial is not None:
                    # Redraw the interrupted epoch's binarisation and permutation, then go on from its step.
                    set_rng_state(partial["epoch_rng"])
                epoch_rng = rng_state()
                x_epoch = data.train_epoch()
                first = 0 if partial is None else int(partial["step"])
                batches = minibatches(x_epoch, config.batch_size, start=first)
                total = 0.0
                if partial is not None:
                    set_rng_state(state["rng"])
                    total = float(partial["loss_sum"])
                    partial = None
                i = first
                for i, batch in enumerate(batches, start=first + 1):
                    loss = step(batch)
                    if not math.isfinite(loss):
                        raise diverged(f"non-finite loss ({loss})", epoch + 1, i)
                    per_example = loss / batch.shape[0]
                    if scale is None:
                        scale = max(abs(per_example), 1.0)
                    if per_example > DIVERGENCE_FACTOR * scale:
                        raise diverged(
                            f"training diverged: loss {per_example:.3g} nats/example, over "
                            f"{DIVERGENCE_FACTOR:.0e} times the first step's {scale:.3g},",
                            epoch + 1,
                            i,
                        )
                    total += loss
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{total / min(n, i * config.batch_size):.3f}", refresh=False)
                    if stop.requested:
                        # The loss above was computed before this step's update: check the weights it made.
                        if not all(bool(torch.isfinite(p).all()) for p in params):
                            raise diverged("non-finite weights", epoch + 1, i)
                        checkpoint(epoch, {"step": i, "epoch_rng": epoch_rng, "loss_sum": total})
                        raise TrainingInterrupted(
                            f"interrupted at step {i} of {steps_per_epoch} in epoch {epoch + 1}; saved "
                            f"{ckpt_path} (continue with --resume)",
                            epoch,
                            i,
                            stop.signum,
                            out,
                        )
                model.eval()
                guide.eval()
                terms = elbo_terms(model, guide, data.test_x_eval, num_samples=config.eval_samples)
                # The last step's update is checked here, before it can reach the checkpoint.
                if not math.isfinite(terms.elbo) or -terms.elbo > DIVERGENCE_FACTOR * (scale or 1.0):
                    raise diverged(f"training diverged: test ELBO {terms.elbo:.3g} nats/example after", epoch + 1, i)
                record = {
                    "epoch": epoch + 1,
                    "beta": scaled.beta,
                    "train_loss": total / n,
                    "test_elbo": terms.elbo,
                    "test_recon": terms.recon,
                    "test_kl": terms.kl,
                    "kl": kinds,
                }
                history.append(record)
                checkpoint(epoch + 1)
                held_epoch, held_step, written = epoch + 1, 0, True
                append_jsonl(metrics_path, record)
                if stop.requested:
                    then = (
                        "continue with --resume"
                        if epoch + 1 < config.epochs
                        else f"training is complete; figures not written: pyro-vae plot {out}"
                    )
                    raise TrainingInterrupted(
                        f"interrupted after epoch {epoch + 1}; saved {ckpt_path} ({then})",
                        epoch + 1,
                        0,
                        stop.signum,
                        out,
                    )
    except TrainingInterrupted:
        bar.close()
        raise
    except KeyboardInterrupt:
        # A second Ctrl-C, or Ctrl-C outside the main thread: stopped wherever it was; the checkpoint on
        # disk is the last one saved (an interrupted save leaves it whole).
        bar.close()
        resumable = " (continue with --resume)" if written else ""
        raise TrainingInterrupted(
            f"interrupted; {held()}{resumable}", held_epoch, held_step, signal.SIGINT, out
        ) from None
    bar.close()
    model.eval()
    guide.eval()
    result = TrainResult(config, history, model, guide, data, out)
    if figures:
        from pyro_vae.figures import write_figures

        try:
            result.figures = write_figures(model, guide, data, history, out)
        except KeyboardInterrupt:
            raise TrainingInterrupted(
                f"interrupted while writing figures; training is complete in {ckpt_path} "
                f"(pyro-vae plot {out} writes them)",
                held_epoch,
                out=out,
            ) from None
    return result
