"""``--which last|best``: which checkpoint of a run ``evaluate``, ``compare-estimators`` and ``plot`` load.

``best`` is ``best.pt``, the checkpoint of the epoch with the best validation ELBO (written by ``train --validation
N``; ``pyro_vae.run_dir.load_run(DIR, which="best")``). Its results are written beside the last checkpoint's rather
than over them (``pyro_vae.run_dir.result_name``: ``evaluation_best.json``; plot's figures in DIR/best/).
"""

from __future__ import annotations

import argparse

from pyro_vae.errors import UserError

CHOICES = ("last", "best")


def add_which_option(parser: argparse.ArgumentParser, writes: str) -> None:
    """Add ``--which`` to ``parser``; ``writes``: what the command writes for ``best`` (for the help)."""
    parser.add_argument(
        "--which",
        choices=CHOICES,
        default="last",
        help="the checkpoint to load: last (checkpoint.pt, default) or best (best.pt, the best validation ELBO of a "
        f"run trained with --validation N; results go to {writes}, beside the last checkpoint's)",
    )


def check_which(args: argparse.Namespace) -> None:
    """One-line error for ``--which best`` with ``--model-module`` (a module of the user's has no checkpoints)."""
    if args.which != "last" and getattr(args, "model_module", None):
        raise UserError(f"--which {args.which} loads a run's checkpoint; --model-module has none (leave --which out)")
