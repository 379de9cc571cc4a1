"""``pyro-vae kl-ablation``: the blog's experiment, a 2-D VAE trained with and without the KL term."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pyro_vae.ablation import ABLATION_DEFAULTS, default_config, kl_ablation
from pyro_vae.commands.options import add_config_options, given_options
from pyro_vae.guards import TrainingInterrupted
from pyro_vae.run_dir import CHECKPOINT, RESUMABLE_CHANGES, resume_config


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="train a 2-D VAE with (beta = 1) and without (beta = 0) the KL term; compare their latent spaces",
        description="Train the same 2-D VAE with beta = 1 and beta = 0 (same seed and epochs) into OUT/with_kl and "
        "OUT/without_kl (each with all figures), then write OUT/kl_ablation.png (latent scatter and decoded grid side "
        "by side) and OUT/summary.json (latent mean, std and range of the test encoder means; test ELBO at beta = 1, "
        "its KL and reconstruction error; the blog's completeness and continuity, measured: codes inside the prior's "
        "95% region, gaps in the occupied region, steps between neighbouring decodings). Runs already under OUT are "
        "kept unless --resume (continue them) or --overwrite (replace them) is given, as for pyro-vae train.",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/kl-ablation"), metavar="DIR", help="output directory")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the runs under OUT from their checkpoints (options given here override the stored config; "
        f"only {', '.join('--' + c.replace('_', '-') for c in RESUMABLE_CHANGES)} may change)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the runs already under OUT")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    converters = add_config_options(parser, skip=("z_dim", "beta", "require_analytic_kl"), defaults=ABLATION_DEFAULTS)
    parser.set_defaults(run=run, _converters=converters)
    return parser


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    model_opts, train_opts = given_options(args)
    first = args.out / "with_kl"
    if args.resume and (first / CHECKPOINT).exists():
        # As pyro-vae train --resume: the stored config with the options given now (beta is set per run).
        base = resume_config(first, model_opts, train_opts)[0]
    else:
        base = default_config(None, **model_opts, **train_opts)
    try:
        summary = kl_ablation(args.out, base, progress=args.progress, resume=args.resume, overwrite=args.overwrite)
    except TrainingInterrupted as err:
        raise TrainingInterrupted(
            f"interrupted in {err.out}; continue the experiment with pyro-vae kl-ablation --out {args.out} --resume",
            err.epoch,
            err.step,
            err.signum,
            err.out,
        ) from None
    print(
        f"{'':12} {'latent std':>16} {'latent range (z1; z2)':>30} {'test ELBO':>10} {'recon error':>12} "
        f"{'in 95%':>7} {'gaps':>6} {'step':>6}"
    )
    for name, s in summary.items():
        std = " ".join(f"{v:7.3f}" for v in s["latent_std"])
        rng = "; ".join(f"[{lo:.2f}, {hi:.2f}]" for lo, hi in s["latent_range"])
        print(
            f"{name:12} {std:>16} {rng:>30} {s['test_elbo']:10.3f} {s['test_recon_error']:12.3f} "
            f"{s['inside_prior_95']:7.1%} {s['gap_fraction']:6.1%} {s['grid_step_ratio']:6.3f}"
        )
    print(
        f"wrote {args.out / 'kl_ablation.png'}, {args.out / 'summary.json'} and the runs' figures "
        f"in {args.out / 'with_kl'}, {args.out / 'without_kl'} ({time.perf_counter() - start:.1f} s)"
    )
    return 0
