"""Training a VAE by SVI: the ``Trainer`` (setup, one epoch, evaluation, checkpoint) and ``train``.

>>> from pyro_vae import TrainConfig, VAEConfig, train
>>> config = TrainConfig(model=VAEConfig(z_dim=2, hidden=(128,)), dataset="digits", epochs=20)
>>> result = train(config, "runs/digits")          # writes DIR/checkpoint.pt, metrics.jsonl, figures
>>> result.metrics[-1]["test_elbo"]                 # nats per test example
>>> train(dataclasses.replace(config, epochs=40), "runs/digits", resume=True)   # continues exactly

Each epoch minimises the beta-weighted negative ELBO, E_q[-log p(x|z)] + beta_t KL(q || p) (eq. 28 with
a weighted KL; the latent sites of model and guide are scaled by beta_t), where beta_t rises linearly
from 0 to ``beta`` over ``kl_warmup`` epochs (Bowman et al. 2016) or follows ``kl_schedule="cyclical"`` (Fu et
al. 2019; ``pyro_vae.beta.cyclical_beta``), with one torch Adam over all parameters (``TrainStep``, which takes
beta_t as an input). ``free_bits`` > 0 floors each latent dimension's minibatch-averaged KL
(``pyro_vae.estimators.FreeBitsELBO``; Kingma et al. 2016), and ``lr_schedule`` steps a
``torch.optim.lr_scheduler`` after each epoch (its state is in the checkpoint). After each epoch (every
``eval_every``) the test ELBO (beta = 1) and its terms are evaluated (``pyro_vae.elbo_terms``); every
``checkpoint_seconds`` (and after the last epoch) the checkpoint is saved atomically, then its epochs' records go
to ``metrics.jsonl``. Ctrl-C or SIGTERM lets the step in progress finish, saves a mid-epoch checkpoint and stops
(``TrainingInterrupted``); ``resume=True`` goes on from that very step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer.util import is_validation_enabled
from tqdm.auto import tqdm

from pyro_vae import figures as run_figures
from pyro_vae.atomic import WriteError
from pyro_vae.config import TrainConfig
from pyro_vae.data import VAEData, minibatches
from pyro_vae.distributed import join_strategy
from pyro_vae.early_stopping import EarlyStopping
from pyro_vae.elbo_terms import ELBOTerms
from pyro_vae.errors import UserError
from pyro_vae.estimators import make_training_elbo, training_jit
from pyro_vae.estimators.free_bits import NO_ANALYTIC_KL
from pyro_vae.guards import DivergenceGuard, NonFiniteLossError, TrainingInterrupted
from pyro_vae.interrupts import DeferredInterrupts
from pyro_vae.kl_check import check_training_kl
from pyro_vae.labelled_batches import labelled_plan, m2_batches
from pyro_vae.labelled_data import check_labels, choose_labelled, reads_labels, test_input, training_labels
from pyro_vae.loggers import check_logger, check_mlflow_uri, make_logger
from pyro_vae.models.labelled import pack
from pyro_vae.pairs import as_pair, prepare_pair
from pyro_vae.plugins import required_plugins
from pyro_vae.registry import build
from pyro_vae.run_dir import (
    BEST,
    CHECKPOINT,
    FORMAT_VERSION,
    Position,
    RunDir,
    TrainResult,
    data_digest,
    rng_state,
    set_rng_state,
    torch_rng_state,
)
from pyro_vae.step import make_optimizer, make_scheduler, parameters_of
from pyro_vae.strategy import SingleProcess, StopFlag, Strategy
from pyro_vae.validation import hold_out, validation_eval

__all__ = ["NonFiniteLossError", "TrainConfig", "TrainResult", "Trainer", "TrainingInterrupted", "train"]


class Trainer:
    """Trains the VAE of ``config`` into the run directory ``out_dir``: ``Trainer(...).fit()``.

    ``setup`` loads the data, builds model, guide, optimizer and estimator, and starts the run or restores its
    checkpoint; ``train_epoch`` runs one epoch of steps; ``evaluate`` gives the test ELBO and its terms;
    ``save_checkpoint`` writes the checkpoint. ``fit`` runs them all and handles Ctrl-C / SIGTERM. Figures are
    not the trainer's: ``train`` writes them after ``fit``.

    ``out_dir`` is a path (``fit`` then locks it for the run) or the ``RunDir`` of a lock the caller holds
    (``pyro_vae.run_dir.RunDir.lock``), through which every file is written. ``resume`` continues the checkpoint
    there (``state``: that checkpoint, if already loaded); ``overwrite`` replaces it instead. ``strategy`` spreads
    training over processes (``pyro_vae.strategy``; default: the ranks of a torchrun launch, else this process
    alone). Clears Pyro's global parameter store and seeds the global RNGs.
    """

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path | RunDir,
        *,
        data: VAEData | None = None,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        state: dict[str, Any] | None = None,
        model: Callable[..., Any] | None = None,
        guide: Callable[..., Any] | None = None,
        logger: str = "none",
        collective_timeout: float | None = None,
        strategy: Strategy | None = None,
        mlflow_uri: str | None = None,
    ) -> None:
        check_logger(logger)  # the config validated itself when it was made
        check_mlflow_uri(logger, mlflow_uri)
        self.logger_name = logger
        self.mlflow_uri = mlflow_uri
        self.keep_logger = False  # fit(keep_logger=True): train() closes it after logging the figures
        self.pair = None if model is None and guide is None else as_pair(model, guide)
        self.config = config
        self.run: RunDir | None = out_dir if isinstance(out_dir, RunDir) else None
        self.out = out_dir.path if isinstance(out_dir, RunDir) else Path(out_dir)
        self.checkpoint_path = self.out / CHECKPOINT
        self.progress = progress
        self.data = data
        self.history: list[dict[str, Any]] = []
        self.position = Position()
        self.guard = DivergenceGuard(lambda: self.position.kept(self.checkpoint_path))
        self.resume = resume
        self.overwrite = overwrite
        self.collective_timeout = collective_timeout
        self.strategy = strategy
        self._state = state
        self._partial: dict[str, Any] | None = None  # a mid-epoch checkpoint's record of the epoch in progress
        self.steps_run = 0  # training steps this process ran
        self._unwritten: list[dict[str, Any]] = []  # metrics records waiting for their checkpoint
        self._last_save = time.monotonic()
        self.evaluations = 0  # test-ELBO evaluations this process ran
        self.val_x: torch.Tensor | None = None  # the held-out validation set (TrainConfig.validation)
        self.stopping = EarlyStopping(
            config.patience, config.min_delta, config.kl_warmup if config.kl_schedule == "linear" else 0
        )
        self.labelled: torch.Tensor | None = None  # M2's labelled training examples (indices)
        self.train_labels: torch.Tensor | None = None  # the label column of a labelled model's training inputs

    def say(self, message: str) -> None:
        """A status line on stderr (when ``progress``)."""
        if self.progress:
            tqdm.write(message, file=sys.stderr)

    def setup(self) -> None:
        """Data, model, guide, optimizer and estimator; then a fresh run or the checkpoint's state.

        Needs the run directory's lock: ``fit`` takes it, or pass the ``RunDir`` of a held lock as ``out_dir``."""
        if self.run is None or not self.run.locked:
            raise RuntimeError("Trainer.setup writes the run directory: call fit(), or pass RunDir.lock(...)'s RunDir")
        if self.strategy is None:
            self.strategy = SingleProcess()
        cfg = self.config
        self.device = self.strategy.device(cfg)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        cfg, held = self._load_data(cfg)
        pyro.clear_param_store()
        pyro.set_rng_seed(cfg.seed)
        if self.pair is None:
            self._build()
        else:  # the user's own model and guide (pyro_vae.pairs)
            self.model, self.guide = self.pair
            self.params, self.config = prepare_pair(self.model, self.guide, self.data, cfg)
            cfg = self.config
        if held is not None:
            self.val_x = validation_eval(self.data, held)  # binarised once, as the data are prepared
        # one fused Adam (benchmarks/step_time.py)
        self.optimizer = make_optimizer(self.params, cfg.lr, eps=cfg.adam_eps)
        self.scheduler = make_scheduler(
            self.optimizer,
            cfg.lr_schedule,
            epochs=cfg.epochs,
            step_epochs=cfg.lr_step_epochs,
            gamma=cfg.lr_gamma,
            patience=cfg.lr_patience,
            milestones=cfg.lr_milestones,
        )
        nesting = getattr(self.model, "plate_nesting", 1)
        self.elbo = self._training_elbo(nesting)
        self.kl = self._check_kl()
        self.strategy.before_first_write()
        if self._state is None:
            self.run.start(self.config)
        else:
            self._restore(self._state)
        self.logger = make_logger(
            self.logger_name if self.run.writes else "none",
            self.out,
            self.position.epoch,
            config=self.config.to_dict(),
            resume=self._state is not None,
            mlflow_uri=self.mlflow_uri,
        )
        # The model and guide run as Pyro runs them (validation on the first step only); --jit adds the compiled
        # objective, checked against them at each new batch shape (pyro_vae/step.py), where the strategy compiles.
        jit = training_jit(cfg.elbo, cfg.particles, cfg.elbo_options, jit=cfg.jit, plate_nesting=nesting)
        if jit is not None and not self.strategy.compiles:
            self.say("--jit: not used under torchrun; the steps run uncompiled")
        n_train = self.data.train_x.shape[0]
        self.train_step = self.strategy.make_step(
            self.model, self.guide, self.elbo, self.optimizer, self.params, cfg, n_train, jit=jit
        )

    def _load_data(self, cfg: TrainConfig) -> tuple[TrainConfig, torch.Tensor | None]:
        """The data on the device, checked against a resumed checkpoint's; (the config with the data's shape and the
        plugins recorded, the held-out validation examples or None)."""
        self.data = cfg.load_data(self.device) if self.data is None else self.data.to(self.device)
        for note in self.data.notes:
            self.say(note)
        # plugins: the record of where the run's own components come from, to import them again when loaded.
        cfg = cfg.with_data_shape(self.data)
        self.config = cfg = dataclasses.replace(cfg, plugins=required_plugins(cfg.components()))
        self.run.check_writable()
        self.data_digest = data_digest(self.data)  # of the whole data set, held-out examples included
        if self._state is not None:
            self.run.check_data(self._state, self.data)
        if not cfg.validation:
            return cfg, None
        self.data, held = hold_out(self.data, cfg.validation, cfg.validation_split, cfg.seed)
        return cfg, held

    def _build(self) -> None:
        """The model and guide of ``config.model`` (``pyro_vae.build``), on the device, ready for the data."""
        self.model, self.guide = build(self.config.model)
        self.model.to(self.device)
        self.guide.to(self.device)
        self.data.prepare(self.model.likelihood, self.config.binarization)
        if getattr(self.config.model.component_options("prior"), "init_from_data", False):
            self._init_prior_from_data()
        self.params = parameters_of(self.model, self.guide)
        self._labels()

    def _training_elbo(self, nesting: int) -> Any:
        """The configured estimator; for a model with its own (M2's ``TraceEnum_ELBO``), that one."""
        cfg = self.config
        own = getattr(self.model, "training_elbo", None)
        if own is None:
            return make_training_elbo(
                cfg.elbo, cfg.particles, cfg.elbo_options, plate_nesting=nesting, free_bits=cfg.free_bits
            )
        if cfg.elbo != "meanfield" or cfg.free_bits or cfg.elbo_options or cfg.jit:
            raise UserError(
                f"the {cfg.model.model} model trains with its own estimator (TraceEnum_ELBO, y summed exactly, "
                "uncompiled); drop --elbo, --elbo-*, --free-bits and --jit"
            )
        return own(cfg.particles)

    def _labels(self) -> None:
        """For a model that reads labels: check them, choose M2's labelled examples (the checkpoint's on resume)."""
        if not reads_labels(self.model):
            return
        options = self.config.model.component_options("model")
        check_labels(self.data, options.classes, self.config.model.model)
        if not self.model.needs_all_labels:
            if self._state is not None and "labelled" in self._state:
                self.labelled = self._state["labelled"].long().cpu()
            else:
                self.labelled = choose_labelled(self.data.train_y, options.labelled, options.classes)
        self.train_labels = training_labels(self.data, self.labelled)
        if self.labelled is not None:  # M2: labelled rows in every step, scaled (pyro_vae.labelled_batches)
            n = self.data.train_x.shape[0]
            self.model.use_training_set(n)
            count = self.labelled.numel()
            _, _, scale = labelled_plan(n - count, count, self.config.batch_size, options.labelled_batch)
            self.model.labelled_scale = self.guide.labelled_scale = scale

    def _init_prior_from_data(self) -> None:
        init = getattr(self.model.prior, "init_from_data", None)
        if init is None:
            raise UserError(
                f"the {self.config.model.prior} prior cannot start from data (it has no init_from_data); "
                "drop its init_from_data option"
            )
        # Under fixed binarisation the pseudo-inputs start at the binary images training sees (as on static MNIST).
        x = self.data.train_epoch() if self.data.fixed_binarization else self.data.train_x
        init(x)  # on the seeded global generator, so the same seed gives the same start

    def _check_kl(self) -> dict[str, str]:
        """The KL kind of each latent site (said for meanfield), the K = 1 note, and --require-analytic-kl."""
        # kl_kinds samples from the guide: keep that off the training random stream.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            x = test_input(self.model, self.data)[: self.config.batch_size]
            cfg = self.config
            kinds = check_training_kl(
                self.model,
                self.guide,
                x,
                self.elbo,
                self.say,
                name=cfg.elbo,
                particles=cfg.particles,
                require_analytic_kl=cfg.require_analytic_kl,
            )
        if cfg.free_bits and (estimated := [site for site, kind in kinds.items() if kind != "analytic"]):
            raise UserError(f"{NO_ANALYTIC_KL}; none is registered at site(s) {', '.join(estimated)}")
        return kinds

    def _restore(self, state: dict[str, Any]) -> None:
        self.run.load_weights(self.model, self.guide, state)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.history = json.loads(state["metrics"])
        self.stopping.replay(self.history)  # the best validation ELBO and the epochs since, as they were
        self.run.restore(self.history)
        set_rng_state(state["rng"])
        self._partial = state.get("partial")
        self.position = Position.of(state)
        self.say(f"resuming {self.out} at {self.position} of {self.config.epochs}")

    def fit(self, *, keep_logger: bool = False) -> TrainResult:
        """Check the run directory (``RunDir.check_run``, unless the caller did), set up, then train up to
        ``config.epochs``; return the ``TrainResult``. Locks the run directory first unless it was given locked.
        Raises ``TrainingInterrupted``, and ``UserError`` (one line) for a run that may not be trained here or a
        file that could not be written (the last good checkpoint and metrics are kept). The logger is closed at the
        end, unless ``keep_logger`` (``train`` logs the figures to it, then closes it); always when training fails."""
        self.keep_logger = keep_logger
        if self.run is not None:
            return self._fit()
        with RunDir.lock(self.out, "pyro-vae train") as run:
            self.run = run
            return self._fit()

    def _logged_loop(self) -> None:
        """``_loop``, then the logger closed: FINISHED (unless kept open), KILLED when interrupted, else FAILED."""
        try:
            self._loop()
        except BaseException as err:
            # KILLED: interrupted (TrainingInterrupted too), --resume continues the tracked run. A logger that fails
            # to close (a tracking server gone) must not hide why training stopped.
            with contextlib.suppress(Exception):
                self.logger.close("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
        if not self.keep_logger:
            self.logger.close()

    def _fit(self) -> TrainResult:
        if self.strategy is None:  # torchrun: rank 0 alone writes (RunDir.writes); every rank trains
            self.strategy = join_strategy(self.config.resolve_device(), self.collective_timeout)
        self.progress = self.progress and self.strategy.writes
        with self.strategy.session(lambda: self.position.kept(self.checkpoint_path)):
            self._state = self.run.checked_state(self.config, self.resume, self.overwrite, self._state)
            try:
                self.setup()
                self._logged_loop()
            except WriteError as err:
                raise UserError(self.run.failure_message(err, self.position)) from None
            if self.strategy.step_holds_group:  # DDP holds the process group: freed before the session ends
                self.train_step = None
        self.model.eval()
        self.guide.eval()
        return TrainResult(self.config, self.history, self.model, self.guide, self.data, self.out)

    def _loop(self) -> None:
        if self.position.epoch >= self.config.epochs and not self._partial:
            self.say(f"nothing to do: {self.out} is already trained to epoch {self.position.epoch} (--epochs)")
            return
        if self.stopping.stop and not self._partial:
            self.say(f"nothing to do: {self.out} {self._stopped_early()}")
            return
        steps_per_epoch = self.steps_per_epoch()
        self._bar = tqdm(
            total=self.config.epochs * steps_per_epoch,
            initial=self.position.epoch * steps_per_epoch + self.position.step,
            desc=f"train {self.out.name}",
            unit="step",
            disable=None if self.progress else True,  # None: shown only when stderr is a terminal
            file=sys.stderr,
            dynamic_ncols=True,
        )
        with self._bar:
            try:
                with DeferredInterrupts() as signals:
                    stop = self.strategy.stop_flag(signals)  # torchrun: all ranks stop together
                    for epoch in range(self.position.epoch, self.config.epochs):
                        total, steps = self.train_epoch(epoch, stop)
                        self._end_epoch(epoch, total, steps, stop)
                        if self.stopping.stop:
                            self.say(f"{self.out}: {self._stopped_early()}")
                            break
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

    def _stopped_early(self) -> str:
        s = self.stopping
        return (
            f"stopped early: the validation ELBO has not risen by more than {s.min_delta:g} for {s.bad_epochs} "
            f"epochs (--patience {s.patience}); best {s.best:.3f} at epoch {s.best_epoch} ({BEST})"
        )

    def beta_at(self, epoch: int) -> float:
        """beta of the 0-based ``epoch`` under the KL schedule (linear warm-up or cyclical)."""
        return self.config.kl_beta(epoch)

    def steps_per_epoch(self) -> int:
        """Training steps an epoch: ceil(N / B); for M2 ceil(``|U|`` / B) (``pyro_vae.labelled_batches``)."""
        n, batch = self.data.train_x.shape[0], self.config.batch_size
        if self.labelled is None:
            return math.ceil(n / batch)
        count = self.labelled.numel()
        return labelled_plan(n - count, count, batch, self.config.model.component_options("model").labelled_batch)[0]

    def _batches(self, x_epoch: torch.Tensor, first: int) -> Any:
        """The epoch's batches from step ``first`` on; M2's hold labelled rows in every step."""
        if self.labelled is None:
            return minibatches(x_epoch, self.config.batch_size, start=first)
        known = self.train_labels >= 0
        labelled_batch = self.config.model.component_options("model").labelled_batch
        return m2_batches(x_epoch, known.to(x_epoch.device), self.config.batch_size, labelled_batch, start=first)[0]

    def train_epoch(self, epoch: int, stop: StopFlag) -> tuple[float, int]:
        """One epoch (0-based ``epoch``) of steps; (the summed loss, the number of the last step)."""
        cfg = self.config
        partial = self._partial
        beta = self.beta_at(epoch)
        self.model.train()
        self.guide.train()
        if partial is not None:
            # Redraw the interrupted epoch's binarisation and permutation, then go on from its step.
            set_rng_state(partial["epoch_rng"])
        epoch_rng = torch_rng_state()  # the epoch's draws below come from torch's generators only
        x_epoch = self.data.train_epoch()
        if self.train_labels is not None:  # the labels travel with the pixels, as one packed row each
            x_epoch = pack(x_epoch, self.train_labels)
        first = 0 if partial is None else int(partial["step"])
        batches = self._batches(x_epoch, first)
        self.strategy.begin_epoch(epoch, first)
        total = 0.0
        if partial is not None:
            set_rng_state(self._state["rng"])
            total = float(partial["loss_sum"])
            self._partial = None
        n = self.data.train_x.shape[0]
        i = first
        for i, batch in enumerate(batches, start=first + 1):
            loss = self.train_step(batch, beta=beta)
            self.steps_run += 1
            self.guard.check_loss(loss, batch.shape[0], epoch + 1, i)
            total += loss
            self._bar.update(1)
            if not self._bar.disable:  # a disabled bar still formats its postfix: ~20 us a step
                self._bar.set_postfix(epoch=epoch + 1, loss=f"{total / min(n, i * cfg.batch_size):.3f}", refresh=False)
            if stop.requested:
                # The loss above was computed before this step's update: check the weights it made.
                self.guard.check_weights(self.params, epoch + 1, i)
                # numpy's and Python's states now: a resume restores the checkpoint's "rng" before they are used
                self.save_checkpoint(epoch, {"step": i, "epoch_rng": {**rng_state(), **epoch_rng}, "loss_sum": total})
                raise TrainingInterrupted(
                    f"interrupted at step {i} of {self.steps_per_epoch()} in epoch {epoch + 1}; saved "
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
        evaluate = self.strategy.elbo_terms  # torchrun: shared out among the ranks
        # Validation as set on the first evaluation only, like the steps (~10% of a digits evaluation; performance.md)
        with pyro.validation_enabled(is_validation_enabled() and self.evaluations == 0):
            x = test_input(self.model, self.data)
            terms = evaluate(self.model, self.guide, x, num_samples=self.config.eval_samples)
        self.evaluations += 1
        return terms

    def evaluate_validation(self) -> ELBOTerms:
        """The ELBO (beta = 1) of the held-out validation set, nats per example, in eval mode."""
        self.model.eval()
        self.guide.eval()
        with pyro.validation_enabled(False):  # the same model and data as the test evaluation, checked there
            return self.strategy.elbo_terms(self.model, self.guide, self.val_x, num_samples=self.config.eval_samples)

    def _end_epoch(self, epoch: int, total: float, last_step: int, stop: StopFlag) -> None:
        n = self.data.train_x.shape[0]
        record = {"epoch": epoch + 1, "beta": self.beta_at(epoch), "train_loss": total / n, "kl": self.kl}
        if self.scheduler is not None:
            record["lr"] = self.optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
        # The last step's update is checked here, before it can reach the checkpoint.
        if (epoch + 1) % self.config.eval_every == 0 or epoch + 1 == self.config.epochs:
            terms = self.evaluate()
            self.guard.check_test_elbo(terms.elbo, epoch + 1, last_step, record["beta"])
            record.update(test_elbo=terms.elbo, test_recon=terms.recon, test_kl=terms.kl)
        else:
            self.guard.check_weights(self.params, epoch + 1, last_step)
        improved = self._validate(epoch, record)
        self._step_scheduler(record)
        self.history.append(record)
        self._unwritten.append(record)
        if self._checkpoint_due(epoch + 1) or stop.requested or self.stopping.stop:
            self.save_checkpoint(epoch + 1)
        if improved:
            self.run.save_best(self._checkpoint_record(epoch + 1))
        self.logger.log(record)
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

    def _validate(self, epoch: int, record: dict[str, Any]) -> bool:
        """The validation ELBO of this epoch into ``record`` and the early-stopping state; True for a new best."""
        if self.val_x is None:
            return False
        value = self.evaluate_validation().elbo
        record["val_elbo"] = value
        improved = self.stopping.update(epoch + 1, value)
        record.update(best_val_elbo=self.stopping.best, best_epoch=self.stopping.best_epoch)
        if self.config.patience:
            record["bad_epochs"] = self.stopping.bad_epochs
        return improved

    def _step_scheduler(self, record: dict[str, Any]) -> None:
        """The learning rate of the next epoch: the scheduler's step (plateau: on this epoch's test ELBO)."""
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(record["test_elbo"])  # eval_every is 1 (TrainConfig checks it)
        else:
            self.scheduler.step()

    def _checkpoint_due(self, epochs_done: int) -> bool:
        # ~12 ms (serialise, digest, fsync): as long as a digits epoch, so by the clock (docs/performance.md).
        due = epochs_done >= self.config.epochs or time.monotonic() - self._last_save >= self.config.checkpoint_seconds
        return self.strategy.checkpoint_due(due)  # torchrun: the ranks agree

    def _checkpoint_record(self, epoch: int, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """What a checkpoint holds after ``epoch`` epochs (plus ``partial``), in the format ``FORMAT_VERSION``."""
        record = {
            "format": FORMAT_VERSION,
            "epoch": epoch,
            "config": self.config.to_json(),
            "model": self.model.state_dict(),
            "guide": self.guide.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "rng": rng_state(),
            "metrics": json.dumps(self.history),
            "data_digest": self.data_digest,
        }
        if partial is not None:
            record["partial"] = partial
        if self.labelled is not None:
            record["labelled"] = self.labelled  # M2's labelled examples: a resume uses these
        return record

    def save_checkpoint(self, epoch: int, partial: dict[str, Any] | None = None) -> None:
        """Write the checkpoint atomically (``epoch`` epochs done, plus ``partial``), then its epochs' metrics lines."""
        self.run.save(self._checkpoint_record(epoch, partial))
        self.position = Position(epoch, int(partial["step"]) if partial else 0, saved=True)
        self.run.saved(self.config)
        self.strategy.after_save()
        for line in self._unwritten:
            self.run.append(line)
        self._unwritten.clear()
        self._last_save = time.monotonic()


def train(
    config: TrainConfig,
    out_dir: str | Path | RunDir,
    resume: bool = False,
    progress: bool = True,
    data: VAEData | None = None,
    overwrite: bool = False,
    figures: bool = True,
    state: dict[str, Any] | None = None,
    model: Callable[..., Any] | None = None,
    guide: Callable[..., Any] | None = None,
    logger: str = "none",
    collective_timeout: float | None = None,
    mlflow_uri: str | None = None,
) -> TrainResult:
    """Train the VAE described by ``config`` into ``out_dir`` (``Trainer(...).fit()``), then write its figures.

    Args:
        config: the run's ``TrainConfig`` (``model.x_shape`` may be None: the data's is used).
        out_dir: the run directory: ``config.json``, ``metrics.jsonl``, ``checkpoint.pt``, figures. A path is
            locked from the checks to the last figure; a ``RunDir`` is that of a lock the caller already holds
            (``pyro_vae.run_dir.RunDir.lock``).
        resume: continue the run in ``out_dir`` from its checkpoint up to ``config.epochs``. On CPU the
            metrics equal an uninterrupted run's exactly (model, optimizer and RNG states are restored).
        progress: show a tqdm bar and print one-line status messages (to stderr).
        data: an already loaded data set (else ``config.load_data()``).
        overwrite: start afresh even if ``out_dir`` holds a checkpoint (else that is an error).
        figures: write the figures of ``pyro_vae.figures`` at the end (unless nothing was trained: a resume
            of a run that is already at ``config.epochs`` writes nothing, and says so).
        state: the checkpoint to resume, if already loaded (``pyro_vae.run_dir.resume_config`` returns it).
        model, guide: your own Pyro model and guide, trained instead of ``config.model`` (``pyro_vae.pairs``).
        logger: "tensorboard" also logs the metrics for TensorBoard in ``out_dir/tensorboard``; "mlflow" and
            "wandb" log the config, the metrics and the figures to an MLflow or W&B run (``pyro_vae.loggers``).
        collective_timeout: under torchrun, seconds a collective waits for the other ranks (``pyro_vae.distributed``).
        mlflow_uri: with ``logger="mlflow"``, the tracking URI (default: ``$MLFLOW_TRACKING_URI``, else the file
            store ``out_dir/mlruns``; ``pyro_vae.mlflow_logger``).

    Raises:
        UserError (one line): bad data, an unwritable ``out_dir``, another process writing into it (the
        run's lock, ``pyro_vae.run_dir``), an unresumable config or checkpoint, a file that could not be written
        (a full disk, ...), or a non-finite or diverging loss (``NonFiniteLossError``, naming the epoch and
        step); in each case the last good checkpoint and metrics stay.
        TrainingInterrupted (a KeyboardInterrupt) on Ctrl-C or SIGTERM (in the main thread): the step in
        progress finishes, the checkpoint is saved after it, and ``resume=True`` goes on from the next
        step with the same result as an uninterrupted run. A second Ctrl-C stops at once, keeping the
        last completed epoch's checkpoint.
    """
    options = dict(data=data, resume=resume, overwrite=overwrite, progress=progress, state=state, logger=logger)
    options.update(mlflow_uri=mlflow_uri)
    if isinstance(out_dir, RunDir):
        return _train(config, out_dir, options, model, guide, collective_timeout, figures)
    with RunDir.lock(out_dir, "pyro-vae train") as run:  # held from the checks to the last figure
        return _train(config, run, options, model, guide, collective_timeout, figures)


def _train(
    config: TrainConfig,
    run: RunDir,
    options: dict[str, Any],
    model: Callable[..., Any] | None,
    guide: Callable[..., Any] | None,
    collective_timeout: float | None,
    figures: bool,
) -> TrainResult:
    trainer = Trainer(config, run, **options, model=model, guide=guide, collective_timeout=collective_timeout)
    result = trainer.fit(keep_logger=True)
    try:
        if figures and trainer.steps_run and run.writes:  # a resume with nothing to do writes nothing
            result.figures = write_figures(result, run)
            trainer.logger.log_figures(result.figures)
    finally:
        trainer.logger.close()  # training is complete, whether or not its figures could be written
    return result


def write_figures(result: TrainResult, run: RunDir) -> list[Path]:
    """The figures of ``pyro_vae.figures`` at the end of training, captioned with the run's config; one line if
    interrupted or a write fails (training is complete, and ``pyro-vae plot`` writes them)."""
    try:
        return run_figures.write_figures(
            result.model, result.guide, result.data, result.metrics, run.path, config=result.config
        )
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"interrupted while writing figures; training is complete in {run.checkpoint} "
            f"(pyro-vae plot {run.path} writes them)",
            len(result.metrics),
            out=run.path,
        ) from None
    except WriteError as err:
        raise UserError(
            f"could not write {err.path} ({err.reason}); training is complete in {run.checkpoint}; "
            f"{err.advice}, then pyro-vae plot {run.path} writes the figures"
        ) from None
