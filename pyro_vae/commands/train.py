"""``pyro-vae train``: train a VAE and write a run directory (config, metrics, checkpoint, figures).

Every ``VAEConfig`` and ``TrainConfig`` field, and every option of a registered component, is an option
(``pyro_vae.commands.options``); x_shape comes from the data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyro_vae.commands.options import add_config_options, given_options
from pyro_vae.config import TrainConfig
from pyro_vae.distributed import DEFAULT_TIMEOUT_S
from pyro_vae.errors import UserError
from pyro_vae.evaluation import check_collapse
from pyro_vae.loggers import LOGGERS, check_logger, check_mlflow_uri
from pyro_vae.presets import describe, presets
from pyro_vae.ranks import is_writer, launched
from pyro_vae.run_dir import NEW_RUN_FIX, RESUMABLE_CHANGES, RunDir, nothing_to_do, resume_config
from pyro_vae.training import TrainResult, train


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="train a VAE; write config, metrics, checkpoint and figures to --out",
        description="Train a VAE by SVI and write DIR/config.json, DIR/metrics.jsonl (one record per epoch: "
        "train loss, test ELBO, KL and reconstruction terms, nats per example), DIR/checkpoint.pt and figures.",
    )
    # Checked in run(), not by argparse: --preset help lists the presets and needs no run directory.
    parser.add_argument("--out", type=Path, metavar="DIR", help="run directory (required)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in DIR from its checkpoint (options given here override the stored config; "
        f"only {', '.join('--' + c.replace('_', '-') for c in RESUMABLE_CHANGES)} may change)",
    )
    parser.add_argument(
        "--from-previous",
        action="store_true",
        help="with --resume: go back to DIR/checkpoint.previous.pt (the checkpoint saved before the last one, e.g. "
        "when the last one is damaged) and continue from there",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in DIR")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    parser.add_argument(
        "--logger",
        choices=LOGGERS,
        default="none",
        help="also log the metrics of every epoch: tensorboard, in DIR/tensorboard (view with: tensorboard --logdir "
        "DIR); mlflow, with the config as params and the figures as artifacts, in --mlflow-uri (default: "
        "$MLFLOW_TRACKING_URI, else the file store DIR/mlruns); wandb, likewise, offline in DIR/wandb unless logged "
        'in; each needs its package: pip install "pyro-vae[NAME]" (default: none)',
    )
    parser.add_argument(
        "--mlflow-uri",
        metavar="URI",
        help="with --logger mlflow: the MLflow tracking URI (a server, a database or a folder; default: "
        "$MLFLOW_TRACKING_URI, else DIR/mlruns); --resume continues the MLflow run recorded in DIR/mlflow_run.json",
    )
    parser.add_argument(
        "--collective-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="under torchrun: how long a rank waits for the others before it stops with an error (a rank that died "
        f"is noticed at once) (default: {DEFAULT_TIMEOUT_S:g})",
    )
    converters = add_config_options(parser)
    parser.set_defaults(run=run, _converters=converters)
    return parser


def run(args: argparse.Namespace) -> int:
    model_opts, train_opts = given_options(args)
    check_logger(args.logger)  # a missing package: one line before the run directory is touched
    check_mlflow_uri(args.logger, args.mlflow_uri)
    if train_opts.get("preset") == "help":
        print("\n\n".join(describe(p) for p in presets().values()))
        return 0
    if args.out is None:
        raise UserError("pyro-vae train needs --out DIR, the run directory (see 'pyro-vae train --help')")
    if args.from_previous and not args.resume:
        raise UserError("--from-previous goes with --resume (it continues the run from its previous checkpoint)")
    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in --out and --overwrite replaces it; give one of them")
    fix = "make it writable, or copy the run elsewhere and resume there" if args.resume else NEW_RUN_FIX
    # The lock is taken once, here, before the checkpoint is read: what is resumed is what is on disk while this one
    # writes. train() and the Trainer write through the RunDir it gives, and check_run's answer is passed down.
    with RunDir.lock(args.out, "pyro-vae train", fix=fix) as run_dir:
        if args.resume:
            config, state = _resume(args, run_dir, model_opts, train_opts)
            if state is None:
                return 0
        else:
            config = TrainConfig.from_options(model_opts, train_opts)
            state = None
        # Ctrl-C / SIGTERM: TrainingInterrupted, a one-line message and exit 128 + signum from pyro_vae.cli.
        options = dict(resume=args.resume, progress=args.progress, overwrite=args.overwrite, state=state)
        options.update(logger=args.logger, mlflow_uri=args.mlflow_uri)
        result = train(config, run_dir, **options, collective_timeout=args.collective_timeout)
    if is_writer():  # under torchrun, rank 0 speaks for the run
        print_result(result)
        warn_collapse(result)
    return 0


def _resume(
    args: argparse.Namespace, run_dir: RunDir, model_opts: dict, train_opts: dict
) -> tuple[TrainConfig, dict | None]:
    """(the config to resume with, the checked checkpoint), or (config, None) when there is nothing to do."""
    if args.from_previous:
        if launched():  # it rewrites the run's files, which the other ranks are reading
            raise UserError(
                "--from-previous is for one process: run pyro-vae train --resume --from-previous once without "
                "torchrun, then resume under torchrun"
            )
        run_dir.restore_previous()
    config, state = resume_config(args.out, model_opts, train_opts)
    run_dir.check_run(config, resume=True, overwrite=False, state=state)  # what changed, first
    if nothing_to_do(state, config):
        print_once(
            f"pyro-vae: nothing to do: {args.out} is already trained to epoch {state['epoch']} "
            f"(--epochs {config.epochs}); pass a larger --epochs to train on (pyro-vae plot {args.out} "
            "rewrites its figures)",
            file=sys.stderr,
        )
        return config, None
    return config, state


def print_once(message: str, file: object = None) -> None:
    """Print ``message`` in one process only (rank 0 under torchrun)."""
    if is_writer():
        print(message, file=file)


def warn_collapse(result: TrainResult) -> None:
    """A one-line warning on stderr when the trained code shows posterior collapse (``check_collapse`` on the test
    set); nothing when it cannot be checked (a diagnostic never fails a finished run)."""
    try:
        message = check_collapse(result.model, result.guide, result.data.test_x_eval)
    except (RuntimeError, ValueError, NotImplementedError, AttributeError, TypeError):
        return
    if message:
        print(f"pyro-vae: warning: {message}", file=sys.stderr)


def print_result(result: TrainResult) -> None:
    """One line of final metrics and where the run is."""
    if result.metrics:
        last = result.metrics[-1]
        print(
            f"{result.out_dir}: epoch {last['epoch']}, test ELBO {last['test_elbo']:.3f} nats/example "
            f"(reconstruction {last['test_recon']:.3f}, KL {last['test_kl']:.3f})"
        )
    if result.figures:
        print(f"figures: {', '.join(str(p) for p in result.figures)}")
