"""``pyro-vae export RUN DIR``: a self-contained, checksummed bundle of a trained run (``pyro_vae.bundle``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pyro_vae.bundle import MANIFEST, model_card, write_bundle
from pyro_vae.errors import UserError
from pyro_vae.run_dir import BEST, RunDir, load_checkpoint, read_config


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="write a self-contained, checksummed bundle of a run (safetensors weights, config, model card)",
        description="Write DIR/weights.safetensors (the model's and guide's tensors), config.json, run.json (epoch, "
        "metrics), README.md (a model card) and SHA256SUMS, from the run in RUN. load_run(DIR) loads the bundle, "
        "checking every file's SHA-256 first.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="run directory written by pyro-vae train")
    parser.add_argument("out", type=Path, metavar="DIR", help="the bundle's directory (new, or an older bundle)")
    parser.add_argument(
        "--which",
        choices=("last", "best"),
        default="last",
        help="the last checkpoint, or best.pt (the best validation ELBO of a run trained with --validation) "
        "(default: last)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a bundle already in DIR")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    run_dir = RunDir(args.run_dir)
    if not run_dir.path.is_dir():
        raise UserError(f"run directory {run_dir.path} does not exist")
    out = args.out
    if out.resolve() == run_dir.path.resolve():
        raise UserError("the bundle needs a directory of its own, not the run directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / MANIFEST).is_file():
            raise UserError(f"{out} exists and is not a bundle; choose a new directory for the bundle")
        if not args.overwrite:
            raise UserError(f"{out} already holds a bundle; pass --overwrite to replace it")
    if args.which == "best":
        if not run_dir.best.is_file():
            raise UserError(f"no {BEST} in {run_dir.path}: only a run trained with --validation N has one")
        state = load_checkpoint(run_dir.best)
    else:
        state = run_dir.read_checkpoint()
    config = read_config(state["config"])  # a run whose config cannot be read is not exported
    info = {"checkpoint": args.which, "epoch": int(state["epoch"]), "metrics": json.loads(state["metrics"])}
    card = model_card(config.to_dict(), info, run_dir.path.name)
    for path in write_bundle(out, config.to_json(), state, args.which, card):
        print(path)
    return 0
