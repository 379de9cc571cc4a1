"""``pyro-vae compare-estimators DIR``: ELBO estimators side by side on a trained model (or --train one first), or on
a Pyro model and guide of the user's own (``--model-module PATH.py:FACTORY``).

For a fixed model, guide and batch of test examples: each estimator's value (mean and std over R draws), its
bias against the importance-sampled log p(x), the variance and SNR of its gradient for the encoder and the
decoder (Rainforth et al. 2018) with bootstrap intervals and the noise floor for R, and ms per step; then SNR
against K for iwae and dreg. Writes DIR/estimators.csv, DIR/estimators.json and DIR/snr_vs_k.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pyro
import torch

from pyro_vae.commands.model_module import (
    add_model_module_options,
    check_module_fits,
    load_model_module,
    module_test_data,
)
from pyro_vae.commands.options import add_config_options, given_options
from pyro_vae.commands.which import add_which_option, check_which
from pyro_vae.comparison import (
    COLUMN_HELP,
    check_estimators_for_guide,
    compare_estimators,
    format_table,
    plot_snr_versus_particles,
    resolve_parameter_groups,
    snr_floor,
    snr_versus_particles,
    write_csv,
    write_json,
)
from pyro_vae.config import TrainConfig
from pyro_vae.errors import UserError
from pyro_vae.estimators import ESTIMATORS
from pyro_vae.exact_reference import exact_reference, has_discrete_latents
from pyro_vae.importance import importance_sample
from pyro_vae.psis import KhatSummary
from pyro_vae.run_dir import RunDir, load_run, result_name
from pyro_vae.training import train

CSV, JSON, PLOT = "estimators.csv", "estimators.json", "snr_vs_k.png"


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="compare ELBO estimators (value, bias, gradient variance and SNR, cost) on a trained run",
        description="Compare ELBO estimators on the run in DIR (or train one there first with --train and the "
        f"training options below). Writes DIR/{CSV}, DIR/{JSON} and DIR/{PLOT}. Timings use --threads "
        f"torch threads (default here: 1). Columns (nats per example): {COLUMN_HELP}. The reference log p(x) is "
        "importance-sampled with --ll-samples particles; its standard error is printed with it and enters the "
        "bias's. When the guide and the model share one pyro.module, the parameters cannot be split into encoder "
        "and decoder: a warning says so and the gradient columns are over all parameters ('all').",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="run directory (from pyro-vae train --out DIR)")
    parser.add_argument("--train", action="store_true", help="train a model in DIR first (training options below)")
    add_which_option(
        parser, f"DIR/{result_name(CSV, 'best')}, DIR/{result_name(JSON, 'best')}, DIR/{result_name(PLOT, 'best')}"
    )
    parser.add_argument(
        "--estimators",
        type=_names,
        default=None,
        metavar="A,B,...",
        help="comma-separated estimator names (default: every estimator that works with the model's latents: for "
        f"continuous ones {','.join(_default_names(False))}; for discrete ones {','.join(_default_names(True))}; less "
        "those that refuse the model or guide, e.g. disarm on categorical latents or jit-stl on a hierarchical guide, "
        "each skip said in one line)",
    )
    bounds = ", ".join(name for name, spec in ESTIMATORS.items() if spec.multi_particle)
    parser.add_argument(
        "--particles", type=int, default=10, metavar="K", help=f"K for {bounds} in the table (default: 10)"
    )
    parser.add_argument("--draws", type=int, default=100, metavar="R", help="draws per estimator (default: 100)")
    parser.add_argument(
        "--examples", type=int, default=64, metavar="N", help="test examples in the batch (default: 64)"
    )
    parser.add_argument(
        "--ll-samples", type=int, default=5000, metavar="K", help="importance samples for log p(x) (default: 5000)"
    )
    parser.add_argument(
        "--snr-ks",
        type=int,
        nargs="+",
        default=None,
        metavar="K",
        help="K values of the SNR plot (default: 1 5 10 50; 2 5 10 50 for discrete latents)",
    )
    parser.add_argument(
        "--snr-estimators",
        type=_names,
        default=None,
        metavar="A,B",
        help="estimators of the SNR plot (default: iwae,dreg; rws,vimco for discrete latents)",
    )
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars (on a terminal)"
    )
    add_model_module_options(parser, data_flags=False)  # --dataset, --data-dir, --download come from TrainConfig
    # --train's model is trained with one particle: --particles is the comparison's K, and one K option is enough.
    # The estimators' own options (--elbo-alpha) apply to every compared estimator that declares them.
    converters = add_config_options(parser, skip=("particles",))
    parser.set_defaults(run=run, _converters=converters)
    return parser


def _default_names(discrete: bool) -> list[str]:
    """Every estimator name (with the jit- spellings) that works with discrete or continuous latents."""
    return [n for n in ESTIMATORS.names() if ESTIMATORS[n].works_with(discrete)]


def _usable_defaults(names: list[str], model, guide, x: torch.Tensor, args: argparse.Namespace) -> list[str]:
    """The default estimators ``names`` less those that refuse the model or guide (disarm on categorical latents,
    enum beyond --elbo-max-states, a jit- estimator on a guide whose sites depend on earlier ones, ...), each skip
    said in one line. The refusals are the estimators' own one-line errors (``UserError``, or the ``ValueError`` /
    ``NotImplementedError`` that Pyro and the estimators raise for a site they do not handle), met by one loss and
    gradient on the compared batch; every default is tried, since any of them may refuse a model or guide. A user-named
    estimator that refuses stays an error."""
    kept = []
    for name in names:
        try:
            # One loss and gradient: some refusals (a path-derivative estimator's) come only with the gradient.
            with pyro.get_param_store().scope():  # leaves no parameter (baseline) behind
                try:
                    # on the compared batch itself: a refusal may depend on its shape (one example squeezes some
                    # Pyro baselines' batch dims), and one step costs little next to the draws that follow
                    _estimator(name, args).loss_and_grads(model, guide, x)
                finally:  # the probe's gradient is no one's (model and guide may be plain functions)
                    modules = [m for m in (model, guide) if isinstance(m, torch.nn.Module)]
                    for p in [*pyro.get_param_store().values(), *(p for m in modules for p in m.parameters())]:
                        p.grad = None
        except (UserError, ValueError, NotImplementedError) as err:
            said = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            print(f"pyro-vae: skipping default estimator {name}: {said}", file=sys.stderr)
            continue
        kept.append(name)
    if not kept:
        raise UserError(
            "every default estimator refuses this model and guide (see the lines above); name some with --estimators"
        )
    return kept


def _check(args: argparse.Namespace) -> None:
    check_which(args)
    for name in [*(args.estimators or []), *(args.snr_estimators or [])]:
        if name not in ESTIMATORS:
            raise ESTIMATORS.unknown(name)
    if args.estimators is not None and not args.estimators:
        raise UserError("--estimators is empty; give at least one name")
    for flag, value in (("--particles", args.particles), ("--draws", args.draws), ("--examples", args.examples)):
        if value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if args.draws < 2:
        raise UserError(f"--draws must be >= 2 (a variance needs two draws), got {args.draws}")
    if args.ll_samples < 1 or min(args.snr_ks or [1]) < 1:
        raise UserError("--ll-samples and --snr-ks must be >= 1")


def _estimator(name: str, args: argparse.Namespace):
    """The estimator ``name`` with the comparison's K (``--particles``) and the options given (``--elbo-alpha``)
    that it declares."""
    spec = ESTIMATORS[name]
    given = given_options(args, {"elbo": name})[1].get("elbo_options", {})
    options = {k: v for k, v in given.items() if k in spec.option_names}
    return spec.make(num_particles=args.particles if spec.multi_particle else 1, **options)


#: TrainConfig options that select the data of a user's module (--model-module) rather than configure training.
_DATA_OPTIONS = {"dataset", "data_dir", "download", "threads"}


def _source(args: argparse.Namespace, run_dir: RunDir):
    """(model, guide, test x, title, record) from the run in DIR, trained first with --train, or --model-module."""
    model_opts, train_opts = given_options(args)
    if args.model_module:
        if args.train or model_opts or set(train_opts) - _DATA_OPTIONS - {"elbo_options"}:
            raise UserError(
                "--model-module takes only --dataset, --data-dir, --download, --threads and --elbo-OPTION "
                "of the options"
            )
        model, guide = load_model_module(args.model_module)
        args.dataset, args.data_dir = train_opts.get("dataset", "digits"), train_opts.get("data_dir")
        args.download = train_opts.get("download", True)
        x, name = module_test_data(args)
        check_module_fits(model, guide, x, name)
        run_dir.check_writable()
        title = f"{args.model_module} on {name}"
        return model, guide, x, title, {"model_module": args.model_module, "dataset": name}
    if args.train:
        # The trained estimator takes the given options it declares; the others are the comparison's.
        declared = ESTIMATORS[train_opts.get("elbo", "meanfield")].option_names
        train_opts["elbo_options"] = {k: v for k, v in train_opts.get("elbo_options", {}).items() if k in declared}
        train(TrainConfig.from_options(model_opts, train_opts), run_dir, progress=args.progress)
    elif model_opts or set(train_opts) - {"threads", "elbo_options"}:
        raise UserError("model and training options need --train (to compare on an existing run, give only DIR)")
    loaded = load_run(args.dir, which=args.which)
    at = str(loaded.position) + (" (best.pt: the best validation ELBO)" if args.which == "best" else "")
    title = f"{args.dir}: {loaded.data.name}, z_dim {loaded.config.model.z_dim}, {at}"
    record = {
        "checkpoint": args.which,
        "dataset": loaded.data.name,
        "epoch": loaded.epoch,
        "step": loaded.step,
        "z_dim": loaded.config.model.z_dim,
    }
    return loaded.model, loaded.guide, loaded.data.test_x_eval, title, {**record, "seed": loaded.config.seed}


def run(args: argparse.Namespace) -> int:
    # The run's lock for as long as this may write into it (one writer per run; pyro_vae.run_dir).
    with RunDir.lock(args.dir, "pyro-vae compare-estimators", create=args.train or bool(args.model_module)) as run_dir:
        return _run(args, run_dir)


def _run(args: argparse.Namespace, run_dir: RunDir) -> int:
    _check(args)
    threads = given_options(args)[1].get("threads") or 1
    model, guide, x, where, record = _source(args, run_dir)
    # One thread by default: small models run fastest on one, and timings on a busy machine stay stable.
    torch.set_num_threads(threads)
    x = x[: args.examples]
    seed = record.pop("seed", 0)
    encoder, decoder, problem = resolve_parameter_groups(model, guide, x)
    params = (encoder, decoder)
    groups = ("enc", "dec")
    if problem:
        print(
            f"pyro-vae: warning: {problem.replace('pass encoder_params=', 'in Python, pass encoder_params=')}",
            file=sys.stderr,
        )
        groups = ("all", "dec")

    # Small discrete latents: the exact log p(x), values and gradients by enumeration; else importance sampling.
    exact = exact_reference(model, guide, x)
    discrete = exact is not None or has_discrete_latents(model, guide, x)
    if args.snr_estimators is None:  # the K-particle estimators that work with the latents; VIMCO needs K >= 2
        args.snr_estimators = ["rws", "vimco"] if discrete else ["iwae", "dreg"]
    if args.snr_ks is None:
        args.snr_ks = [2, 5, 10, 50] if discrete else [1, 5, 10, 50]
    if args.estimators is None:
        args.estimators = _usable_defaults(_default_names(discrete), model, guide, x, args)
    check_estimators_for_guide(guide, x, [*args.estimators, *args.snr_estimators])
    pyro.set_rng_seed(seed)
    khat = None
    if exact is not None:
        log_px, log_px_se = exact.log_likelihood(), 0.0
    else:
        reference = importance_sample(model, guide, x, num_samples=args.ll_samples, progress=args.progress)
        log_px, log_px_se = reference.mean_and_stderr()
        khat = KhatSummary.of(reference.khat, args.ll_samples) if reference.khat is not None else None
    estimators = {name: _estimator(name, args) for name in args.estimators}
    print(f"comparing {len(estimators)} estimators, {args.draws} draws each ...", file=sys.stderr)
    rows = compare_estimators(
        model,
        guide,
        x,
        estimators,
        num_draws=args.draws,
        seed=seed,
        log_px=log_px,
        encoder_params=params[0],
        decoder_params=params[1],
        progress=args.progress,
        log_px_stderr=log_px_se,
        exact=exact,
    )
    print(f"SNR against K for {', '.join(args.snr_estimators)} ...", file=sys.stderr)
    sweep = snr_versus_particles(
        model,
        guide,
        x,
        log_px,
        args.snr_estimators,
        args.snr_ks,
        args.draws,
        seed,
        params,
        args.progress,
        log_px_se,
        exact=exact,
    )

    print(f"{where}; {x.shape[0]} test examples, {args.draws} draws; values in nats per example")
    states = exact.num_states if exact is not None else None
    print(format_table(rows, log_px, log_px_se, args.ll_samples, groups, exact_states=states))
    if khat is not None:
        warning = khat.warning("the reference log p(x) (and so the biases)")
        print(f"reference log p(x), {khat.line()}" + (f"\n{warning}" if warning else ""))
    print("\nSNR against K")
    print(format_table(sweep, groups=groups))
    print("\nwhat each value estimates:")
    for name in estimators:
        print(f"  {name}: {ESTIMATORS[name].description}")

    csv, json_path, plot = (args.dir / result_name(name, args.which) for name in (CSV, JSON, PLOT))
    write_csv(rows + sweep, csv)
    write_json(
        {
            "run": str(args.dir),
            **record,
            "num_examples": int(x.shape[0]),
            "num_draws": args.draws,
            "snr_floor": snr_floor(args.draws),
            "log_likelihood": log_px,
            "log_likelihood_stderr": log_px_se,
            "log_likelihood_samples": None if exact is not None else args.ll_samples,
            "log_likelihood_exact_states": states,
            "log_likelihood_psis": None if khat is None else khat.to_dict(),
            "parameter_groups": "all parameters together" if problem else "encoder and decoder",
            "estimators": [dataclasses.asdict(r) for r in rows],
            "snr_vs_k": [dataclasses.asdict(r) for r in sweep],
        },
        json_path,
    )
    plot_snr_versus_particles(sweep, plot)
    print(f"wrote {csv}, {json_path}, {plot}")
    return 0
