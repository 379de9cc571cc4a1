"""``pyro-vae plot DIR``: (re)write the figures of a training run from its checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from pyro_vae.checks import check_number
from pyro_vae.commands.which import add_which_option
from pyro_vae.errors import UserError
from pyro_vae.figures import plot_run, write_one_class
from pyro_vae.run_dir import BEST_FIGURES, RunDir, load_run


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="write the figures of a run (reconstructions, samples, curves, latent space, manifold grid)",
        description="Load the run in DIR (pyro-vae train --out DIR) and write reconstructions.png, samples.png, "
        "curves.png, latent.png and, for a 2-D latent space, manifold.png into DIR (with --which best, into "
        f"DIR/{BEST_FIGURES}/).",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="run directory written by pyro-vae train")
    add_which_option(parser, f"DIR/{BEST_FIGURES}/")
    parser.add_argument("--device", default="cpu", help="device to decode on (default: cpu)")
    parser.add_argument(
        "--class",
        dest="label",
        type=int,
        metavar="K",
        help="only write DIR/class_K_samples.png: --count samples of class K (--model conditional or m2 runs)",
    )
    parser.add_argument("--count", type=int, default=20, metavar="N", help="samples for --class (default: 20)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    # The run's lock for as long as this may write into it (one writer per run; pyro_vae.run_dir).
    with RunDir.lock(args.dir, "pyro-vae plot", create=False):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.label is not None:
        check_number(args.count, "--count", integer=True, low=1)
        run = load_run(args.dir, device=args.device, which=args.which)
        if not hasattr(run.model, "class_means"):
            raise UserError(
                f"--class needs a run of --model conditional or m2; {args.dir} is a {run.config.model.model}"
            )
        out = args.dir if args.which == "last" else args.dir / BEST_FIGURES
        out.mkdir(exist_ok=True)
        print(write_one_class(run.model, args.label, args.count, run.data.display_shape, out))
        return 0
    for path in plot_run(args.dir, device=args.device, which=args.which):
        print(path)
    return 0
