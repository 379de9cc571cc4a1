"""Training a VAE by SVI: the ``Trainer`` (setup, one epoch, evaluation, checkpoint) and ``train``.

>>> from pyro_vae import TrainConfig, VAEConfig, train
>>> config = TrainConfig(model=VAEConfig(z_dim=2, hidden=(128,)), dataset="digits", epochs=20)
>>> result = train(config, "runs/digits")          # writes DIR/checkpoint.pt, metrics.jsonl, figures
>>> result.metrics[-1]["test_elbo"]                 # nats per test example
>>> train(dataclasses.replace(config, epochs=40), "runs/digits", resume=True)   # continues exactly

Each epoch minimises the beta-weighted negative ELBO, E_q[-log p(x|z)] + beta_t KL(q || p) (eq. 28 with
a weighted KL; the latent sites of model and guide are scaled by beta_t), where beta_t rises linearly
from 0 to ``beta`` over ``kl_warmup`` epochs (Bowman et al. 2016), with one torch Adam over all
parameters (``TrainStep``, which takes beta_t as an input). After each epoch the test set's true ELBO
(beta = 1) and its reconstruction and KL terms are evaluated (``pyro_vae.elbo_terms``), the checkpoint is
saved atomically, and the record is appended to ``metrics.jsonl``. Ctrl-C or SIGTERM lets the step in
progress finish, saves a mid-epoch checkpoint and stops (``TrainingInterrupted``); ``resume=True`` goes on
from that very step.
"""

from __future__ import annotations

import json
import math
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import ELBO, TraceMeanField_ELBO
from tqdm.auto import tqdm

from pyro_vae import figures as run_figures
from pyro_vae.beta import warmup_beta
from pyro_vae.checkpoint import (
    CHECKPOINT,
    CONFIG,
    FORMAT_VERSION,
    METRICS,
    append_jsonl,
    atomic_write_text,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_jsonl,
)
from pyro_vae.config import TrainConfig
from pyro_vae.data import VAEData, minibatches
from pyro_vae.elbo_terms import ELBOTerms, elbo_terms
from pyro_vae.errors import UserError
from pyro_vae.estimators import ESTIMATORS
from pyro_vae.guards import DivergenceGuard, NonFiniteLossError, Position, TrainingInterrupted
from pyro_vae.interrupts import DeferredInterrupts
from pyro_vae.kl_check import MONTE_CARLO, describe, kl_kinds
from pyro_vae.registry import build
from pyro_vae.runs import check_run, prepare_run_dir
from pyro_vae.step import TrainStep, make_optimizer, parameters_of

__all__ = ["NonFiniteLossError", "TrainConfig", "TrainResult", "Trainer", "TrainingInterrupted", "train"]


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


def make_training_elbo(config: TrainConfig) -> ELBO:
    """The run's estimator, with max_plate_nesting = 1 (the model's one "data" plate).

    Fixing the nesting matters for exact resumption: otherwise Pyro guesses it at the first call by
    running the model once, which draws random numbers at a different point of a resumed run.
    """
    return ESTIMATORS[config.elbo].make(num_particles=config.num_particles, max_plate_nesting=1, jit=config.jit)


class Trainer:
    """Trains the VAE of ``config`` into the run directory ``out_dir``: ``Trainer(...).fit()``.

    ``setup`` loads the data, builds model, guide, optimizer and estimator, and starts the run or restores its
    checkpoint; ``train_epoch`` runs one epoch of steps; ``evaluate`` gives the test ELBO and its terms;
    ``save_checkpoint`` writes the checkpoint. ``fit`` runs them all and handles Ctrl-C / SIGTERM. Figures are
    not the trainer's: ``train`` writes them after ``fit``.

    ``resume`` continues the checkpoint in ``out_dir`` (``state``: that checkpoint, if already loaded);
    ``overwrite`` replaces it instead. Clears Pyro's global parameter store and seeds the global RNGs.
    """

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        data: VAEData | None = None,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        state: dict[str, Any] | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.out = Path(out_dir)
        self.checkpoint_path = self.out / CHECKPOINT
        self.metrics_path = self.out / METRICS
        self.progress = progress
        self.data = data
        self.history: list[dict[str, Any]] = []
        self.position = Position()
        self.guard = DivergenceGuard(lambda: self.position.kept(self.checkpoint_path))
        self._state = check_run(self.out, config, resume, overwrite, state)
        self._partial: dict[str, Any] | None = None  # a mid-epoch checkpoint's record of the epoch in progress

    def say(self, message: str) -> None:
        """A status line on stderr (when ``progress``)."""
        if self.progress:
            tqdm.write(message, file=sys.stderr)

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Data, model, guide, optimizer and estimator; then a fresh run or the checkpoint's state."""
        cfg = self.config
        self.device = cfg.resolve_device()
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        self.data = cfg.load_data(self.device) if self.data is None else self.data.to(self.device)
        for note in self.data.notes:
            self.say(note)
        self.config = cfg = cfg.with_data_shape(self.data)
        prepare_run_dir(self.out)
        pyro.clear_param_store()
        pyro.set_rng_seed(cfg.seed)
        self.model, self.guide = build(cfg.model)
        self.model.to(self.device)
        self.guide.to(self.device)
        self.data.prepare(self.model.likelihood)
        if cfg.model.prior_init_from_data:
            self._init_prior_from_data()
        self.params = parameters_of(self.model, self.guide)
        self.optimizer = make_optimizer(self.params, cfg.lr)  # one fused Adam (benchmarks/step_time.py)
        self.elbo = make_training_elbo(cfg)
        self.kl = self._check_kl()
        if self._state is None:
            self._start()
        else:
            self._restore(self._state)
        # fast: validation on the first step only, a compiled meanfield objective (same losses; pyro_vae/step.py).
        self.train_step = TrainStep(
            self.model, self.guide, self.elbo, self.optimizer, self.params, cfg.clip_norm, fast=True
        )

    def _init_prior_from_data(self) -> None:
        init = getattr(self.model.prior, "init_from_data", None)
        if init is None:
            raise UserError(
                f"the {self.config.model.prior} prior cannot start from data (it has no init_from_data); "
                "drop --prior-init-from-data"
            )
        init(self.data.train_x)  # on the seeded global generator, so the same seed gives the same start

    def _check_kl(self) -> dict[str, str]:
        """The KL kind of each latent site (said for meanfield), the K = 1 note, and --require-analytic-kl."""
        cfg = self.config
        # kl_kinds samples from the guide: keep that off the training random stream.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            kinds = kl_kinds(self.model, self.guide, self.data.test_x_eval[: cfg.batch_size])
        meanfield = isinstance(self.elbo, TraceMeanField_ELBO)
        if meanfield:
            self.say(describe(kinds))
        if ESTIMATORS[cfg.elbo].multi_particle and cfg.num_particles == 1:
            self.say(
                f"note: --elbo {cfg.elbo} with --num-particles 1 is the standard ELBO; its bound tightens with K > 1"
            )
        if cfg.require_analytic_kl:
            if not meanfield:
                raise UserError(
                    f"--require-analytic-kl needs a meanfield-type --elbo; {cfg.elbo!r} always estimates the KL"
                )
            mc = [name for name, kind in kinds.items() if kind == MONTE_CARLO]
            if mc:
                raise UserError(
                    "--require-analytic-kl: no kl_divergence is registered for the guide and prior at site(s) "
                    f"{', '.join(mc)}, so the KL would be a Monte Carlo estimate; register one "
                    "(torch.distributions.register_kl) or drop the flag"
                )
        return kinds

    def _start(self) -> None:
        # Only now, with everything checked, replace an old run (--overwrite): never a new config beside an
        # old checkpoint, which --resume would take for this run.
        self.checkpoint_path.unlink(missing_ok=True)
        atomic_write_text(self.out / CONFIG, self.config.to_json() + "\n")
        write_jsonl(self.metrics_path, [])

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.guide.load_state_dict(state["guide"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = json.loads(state["metrics"])
        # The checkpoint is the source of truth: drop metric lines written after it (or restore missing ones).
        write_jsonl(self.metrics_path, self.history)
        set_rng_state(state["rng"])
        self._partial = state.get("partial")
        step = int(self._partial["step"]) if self._partial else 0
        self.position = Position(int(state["epoch"]), step, saved=True)
        where = f"step {step} of epoch {self.position.epoch + 1}" if step else f"epoch {self.position.epoch}"
        self.say(f"resuming {self.out} at {where} of {self.config.epochs}")

    # ------------------------------------------------------------------ the loop

    def fit(self) -> TrainResult:
        """Set up, then train up to ``config.epochs``; return the ``TrainResult`` (raises ``TrainingInterrupted``)."""
        self.setup()
        steps_per_epoch = math.ceil(self.data.train_x.shape[0] / self.config.batch_size)
        self._bar = tqdm(
            total=self.config.epochs * steps_per_epoch,
            initial=self.position.epoch * steps_per_epoch + self.position.step,
            desc=f"train {self.out.name}",
            unit="step",
            disable=not self.progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        with self._bar:
            try:
                with DeferredInterrupts() as stop:
                    for epoch in range(self.position.epoch, self.config.epochs):
                        total, steps = self.train_epoch(epoch, stop)
                        self._end_epoch(epoch, total, steps, stop)
            except TrainingInterrupted:
                raise
            except KeyboardInterrupt:
                # A second Ctrl-C, or Ctrl-C outside the main thread: stopped wherever it was; the checkpoint on
                # disk is the last one saved (an interrupted save leaves it whole).
                resumable = " (continue with --resume)" if self.position.saved else ""
                raise TrainingInterrupted(
                    f"interrupted; {self.position.kept(self.checkpoint_path)}{resumable}",
                    self.position.epoch,
                    self.position.step,
                    signal.SIGINT,
                    self.out,
                ) from None
        self.model.eval()
        self.guide.eval()
        return TrainResult(self.config, self.history, self.model, self.guide, self.data, self.out)

    def beta_at(self, epoch: int) -> float:
        """beta of the 0-based ``epoch`` after KL warm-up."""
        return warmup_beta(epoch, self.config.beta, self.config.kl_warmup)

    def train_epoch(self, epoch: int, stop: DeferredInterrupts) -> tuple[float, int]:
        """One epoch (0-based ``epoch``) of steps; (the summed loss, the number of the last step)."""
        cfg, partial = self.config, self._partial
        beta = self.beta_at(epoch)
        self.model.train()
        self.guide.train()
        if partial is not None:
            # Redraw the interrupted epoch's binarisation and permutation, then go on from its step.
            set_rng_state(partial["epoch_rng"])
        epoch_rng = rng_state()
        x_epoch = self.data.train_epoch()
        first = 0 if partial is None else int(partial["step"])
        batches = minibatches(x_epoch, cfg.batch_size, start=first)
        total = 0.0
        if partial is not None:
            set_rng_state(self._state["rng"])
            total = float(partial["loss_sum"])
            self._partial = None
        n, i = self.data.train_x.shape[0], first
        for i, batch in enumerate(batches, start=first + 1):
            loss = self.train_step(batch, beta=beta)
            self.guard.check_loss(loss, batch.shape[0], epoch + 1, i)
            total += loss
            self._bar.update(1)
            self._bar.set_postfix(epoch=epoch + 1, loss=f"{total / min(n, i * cfg.batch_size):.3f}", refresh=False)
            if stop.requested:
                # The loss above was computed before this step's update: check the weights it made.
                self.guard.check_weights(self.params, epoch + 1, i)
                self.save_checkpoint(epoch, {"step": i, "epoch_rng": epoch_rng, "loss_sum": total})
                raise TrainingInterrupted(
                    f"interrupted at step {i} of {math.ceil(n / cfg.batch_size)} in epoch {epoch + 1}; saved "
                    f"{self.checkpoint_path} (continue with --resume)",
                    epoch,
                    i,
                    stop.signum,
                    self.out,
                )
        return total, i

    def evaluate(self) -> ELBOTerms:
        """The test ELBO (beta = 1) and its reconstruction and KL terms, nats per example, in eval mode."""
        self.model.eval()
        self.guide.eval()
        return elbo_terms(self.model, self.guide, self.data.test_x_eval, num_samples=self.config.eval_samples)

    def _end_epoch(self, epoch: int, total: float, last_step: int, stop: DeferredInterrupts) -> None:
        terms = self.evaluate()
        # The last step's update is checked here, before it can reach the checkpoint.
        self.guard.check_test_elbo(terms.elbo, epoch + 1, last_step)
        record = {
            "epoch": epoch + 1,
            "beta": self.beta_at(epoch),
            "train_loss": total / self.data.train_x.shape[0],
            "test_elbo": terms.elbo,
            "test_recon": terms.recon,
            "test_kl": terms.kl,
            "kl": self.kl,
        }
        self.history.append(record)
        self.save_checkpoint(epoch + 1)
        self.position = Position(epoch + 1, 0, saved=True)
        append_jsonl(self.metrics_path, record)
        if stop.requested:
            then = (
                "continue with --resume"
                if epoch + 1 < self.config.epochs
                else f"training is complete; figures not written: pyro-vae plot {self.out}"
            )
            raise TrainingInterrupted(
                f"interrupted after epoch {epoch + 1}; saved {self.checkpoint_path} ({then})",
                epoch + 1,
                0,
                stop.signum,
                self.out,
            )

    def save_checkpoint(self, epoch: int, partial: dict[str, Any] | None = None) -> None:
        """Write the checkpoint atomically: ``epoch`` completed epochs (plus ``partial``, mid-epoch)."""
        record = {
            "format": FORMAT_VERSION,
            "epoch": epoch,
            "config": self.config.to_json(),
            "model": self.model.state_dict(),
            "guide": self.guide.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "metrics": json.dumps(self.history),
        }
        if partial is not None:
            record["partial"] = partial
        save_checkpoint(record, self.checkpoint_path)


def train(
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    data: VAEData | None = None,
    overwrite: bool = False,
    figures: bool = True,
    state: dict[str, Any] | None = None,
) -> TrainResult:
    """Train the VAE described by ``config`` into ``out_dir`` (``Trainer(...).fit()``), then write its figures.

    Args:
        config: the run's ``TrainConfig`` (``model.x_shape`` may be None: the data's is used).
        out_dir: the run directory: ``config.json``, ``metrics.jsonl``, ``checkpoint.pt``, figures.
        resume: continue the run in ``out_dir`` from its checkpoint up to ``config.epochs``. On CPU the
            metrics equal an uninterrupted run's exactly (model, optimizer and RNG states are restored).
        progress: show a tqdm bar and print one-line status messages (to stderr).
        data: an already loaded data set (else ``config.load_data()``).
        overwrite: start afresh even if ``out_dir`` holds a checkpoint (else that is an error).
        figures: write the figures of ``pyro_vae.figures`` at the end.
        state: the checkpoint to resume, if already loaded (``pyro_vae.runs.resume_config`` returns it).

    Raises:
        UserError (one line): bad data, an unwritable ``out_dir``, an unresumable config, or a non-finite or
        diverging loss (``NonFiniteLossError``, naming the epoch and step; the last good checkpoint stays).
        TrainingInterrupted (a KeyboardInterrupt) on Ctrl-C or SIGTERM (in the main thread): the step in
        progress finishes, the checkpoint is saved after it, and ``resume=True`` goes on from the next
        step with the same result as an uninterrupted run. A second Ctrl-C stops at once, keeping the
        last completed epoch's checkpoint.
    """
    result = Trainer(
        config, out_dir, data=data, resume=resume, overwrite=overwrite, progress=progress, state=state
    ).fit()
    if figures:
        try:
            result.figures = run_figures.write_figures(
                result.model, result.guide, result.data, result.metrics, result.out_dir, config=result.config
            )
        except KeyboardInterrupt:
            raise TrainingInterrupted(
                f"interrupted while writing figures; training is complete in {result.out_dir / CHECKPOINT} "
                f"(pyro-vae plot {result.out_dir} writes them)",
                result.config.epochs,
                out=result.out_dir,
            ) from None
    return result
