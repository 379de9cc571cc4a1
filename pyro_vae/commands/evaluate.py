"""``pyro-vae evaluate DIR``: held-out ELBO, importance-sampled log p(x), their gap, KL per dimension, active units.

Prints a table and writes DIR/evaluation.json (nats per example, averaged over the test examples).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyro

from pyro_vae.bits import bits_per_dim_of
from pyro_vae.checkpoint import atomic_write_text
from pyro_vae.errors import UserError
from pyro_vae.evaluation import ACTIVE_UNIT_THRESHOLD, Evaluation, evaluate
from pyro_vae.lock import run_lock
from pyro_vae.runs import load_run

OUTPUT = "evaluation.json"


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="test ELBO, IS log-likelihood, gap, KL per latent dimension and active units of a trained run",
        description="Load the run in DIR and evaluate it on its test set: the ELBO and the importance-sampled "
        "log p(x) (Burda et al. 2015) per example from the same K samples of q(z|x), their gap, the KL per "
        f"latent dimension and the number of active units (Var_x E_q[z_j|x] > {ACTIVE_UNIT_THRESHOLD}). "
        f"Writes DIR/{OUTPUT}.",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="run directory (from pyro-vae train --out DIR)")
    parser.add_argument(
        "--num-samples", type=int, default=5000, metavar="K", help="importance samples per example (default: 5000)"
    )
    parser.add_argument(
        "--num-examples", type=int, default=None, metavar="N", help="evaluate the first N test examples (default: all)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the importance samples (default: 0)")
    parser.set_defaults(run=run)
    return parser


def format_evaluation(result: Evaluation, title: str) -> str:
    lines = [
        title,
        f"  test ELBO          {result.elbo:12.3f} nats/example",
        f"  IS log p(x)        {result.log_likelihood:12.3f} nats/example  (K = {result.num_samples})",
        f"  gap log p(x)-ELBO  {result.gap:12.3f}",
        f"  KL(q(z|x) || p(z)) {result.kl_total:12.3f}",
        f"  active units       {result.active_units:>5d} of {len(result.posterior_mean_variance)}",
        "",
        "  dim   KL (nats)   Var_x E[z_j|x]   active",
    ]
    kl = result.kl_per_dimension
    for j, var in enumerate(result.posterior_mean_variance):
        kl_text = f"{kl[j]:9.3f}" if kl is not None else "      n/a"
        lines.append(f"  {j:3d}   {kl_text}   {var:14.4f}   {'yes' if var > ACTIVE_UNIT_THRESHOLD else 'no'}")
    if kl is None:
        lines.append("  (the prior does not factorise over dimensions, so only the total KL is defined)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    # The run's lock for as long as this may write into it (one writer per run; pyro_vae.lock).
    with run_lock(args.dir, "pyro-vae evaluate", create=False):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.num_examples is not None and args.num_examples < 1:
        raise UserError(f"--num-examples must be >= 1, got {args.num_examples}")
    loaded = load_run(args.dir)
    x = loaded.data.test_x_eval
    if args.num_examples is not None:
        x = x[: args.num_examples]
    pyro.set_rng_seed(args.seed)
    result = evaluate(loaded.model, loaded.guide, x, num_samples=args.num_samples)
    at = f"epoch {loaded.epoch}" + (f" + {loaded.step} steps (stopped mid-epoch)" if loaded.step else "")
    title = f"{args.dir}: {loaded.data.name}, {at}, {result.num_examples} test examples"
    print(format_evaluation(result, title))
    # Bits per dimension next to nats, for every non-binary likelihood (convention: pyro_vae.bits).
    dims, bits = int(x[0].numel()), {}
    for key, nats in (("elbo", result.elbo), ("log_likelihood", result.log_likelihood)):
        value = bits_per_dim_of(loaded.model.likelihood, loaded.data.levels, nats, dims)
        if value is not None:
            bits[key] = value
    if bits:
        print(f"  bits per dimension: test ELBO {bits['elbo']:.4f}, IS log p(x) {bits['log_likelihood']:.4f}")
    out = args.dir / OUTPUT
    record = {"epoch": loaded.epoch, "step": loaded.step, **result.to_dict(), "bits_per_dim": bits or None}
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0
