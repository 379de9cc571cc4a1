"""``pyro-vae evaluate DIR``: log p(x) with its error, the ELBO, AIS, the inference gaps and collapse diagnostics.

Prints one table and writes DIR/evaluation.json (nats per example, averaged over the test examples). With
``--model-module PATH.py:FACTORY`` the model and guide are the user's own and DIR is only where results go.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import signal
import sys
import typing
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae.ais import AISOptions
from pyro_vae.atomic import atomic_write_text
from pyro_vae.bits import bits_per_dim_of
from pyro_vae.collapse import collapse_message
from pyro_vae.commands.model_module import (
    add_model_module_options,
    check_module_fits,
    load_model_module,
    module_test_data,
)
from pyro_vae.commands.options import field_docs
from pyro_vae.commands.which import add_which_option, check_which
from pyro_vae.errors import UserError
from pyro_vae.evaluation import (
    ACTIVE_UNIT_THRESHOLD,
    PER_EXAMPLE,
    Evaluation,
    SBCOptions,
    evaluate,
    per_example_record,
)
from pyro_vae.gaps import GapOptions
from pyro_vae.importance import DEFAULT_SWEEP, MAX_ROWS, ImportanceEstimate
from pyro_vae.labelled_data import reads_labels
from pyro_vae.psis import KhatSummary
from pyro_vae.run_dir import RunDir, load_run, result_name
from pyro_vae.sbc import DEFAULT_ALPHA, DEFAULT_BINS, DEFAULT_DRAWS
from pyro_vae.sbc_figures import SBC_FIGURE, plot_sbc
from pyro_vae.score_history import write_score
from pyro_vae.semi_supervised import evaluate_labelled

OUTPUT = "evaluation.json"
#: How the printed title names the checkpoint evaluated.
_CHECKPOINT = {"last": "", "best": " (best.pt: the best validation ELBO)"}


def _add_options(parser: argparse.ArgumentParser, cls: type, prefix: str, title: str) -> None:
    """``--PREFIX-FIELD`` for every field of the options dataclass ``cls`` (help from its Fields: docstring)."""
    group = parser.add_argument_group(title)
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        extra: dict[str, Any] = {"type": type(f.default), "metavar": type(f.default).__name__.upper()}
        if typing.get_origin(kind) is typing.Literal:
            extra = {"choices": list(typing.get_args(kind))}
        group.add_argument(
            f"--{prefix}-{f.name.replace('_', '-')}",
            dest=f"{prefix}_{f.name}",
            default=f.default,
            help=f"{docs.get(f.name, f.name)} (default: {f.default})",
            **extra,
        )


def _options(args: argparse.Namespace, cls: type, prefix: str) -> Any:
    try:
        return cls(**{f.name: getattr(args, f"{prefix}_{f.name}") for f in dataclasses.fields(cls)})
    except ValueError as err:
        raise UserError(f"{err}; see --help for the --{prefix}-* options") from None


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="log p(x) with its error, ELBO, AIS, inference gaps, KL per dimension and collapse diagnostics",
        description="Load the run in DIR and evaluate it on its test set: the importance-sampled log p(x) "
        "(Burda et al. 2015) with its standard error, the effective sample size and the estimate as K grows; the "
        "ELBO from the same samples; with --ais, annealed importance sampling (Wu et al. 2017) on the first "
        "examples; with --gaps, the approximation and amortisation gaps (Cremer et al. 2018); with --bdmc N, "
        "BDMC bounds on N data sets simulated from the model (Grosse et al. 2015); with --sbc N, simulation-based "
        f"calibration of q(z|x) on N data sets simulated from the model (Talts et al. 2018; figure DIR/{SBC_FIGURE}); "
        "the Pareto k-hat of the importance weights (Vehtari et al. 2024); the KL per latent dimension, "
        f"active units (Var_x E_q[z_j|x] > {ACTIVE_UNIT_THRESHOLD}), I(x; z) and KL(q(z) || p(z)) (Hoffman & "
        f"Johnson 2016). Writes DIR/{OUTPUT} (with --which best, DIR/{result_name(OUTPUT, 'best')}).",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="run directory (from pyro-vae train --out DIR)")
    add_which_option(parser, f"DIR/{result_name(OUTPUT, 'best')}")
    # The spellings of compare-estimators (--ll-samples, --examples); the older ones stay as aliases.
    parser.add_argument(
        "--ll-samples",
        "--num-samples",
        dest="num_samples",
        type=int,
        default=5000,
        metavar="K",
        help="importance samples per example for log p(x) (default: 5000)",
    )
    parser.add_argument(
        "--max-rows",
        type=int,
        default=MAX_ROWS,
        metavar="N",
        help="at most N (sample, example) pairs through the model at once: lower it when memory runs out, e.g. "
        f"2048 for a VampPrior with 500 components (default: {MAX_ROWS})",
    )
    parser.add_argument(
        "--examples",
        "--num-examples",
        dest="num_examples",
        type=int,
        default=None,
        metavar="N",
        help="evaluate the first N test examples (default: all)",
    )
    parser.add_argument(
        "--sweep",
        type=int,
        nargs="*",
        default=list(DEFAULT_SWEEP),
        metavar="K",
        help="also report log p(x) from the first K samples, for each K below --num-samples "
        f"(default: {' '.join(map(str, DEFAULT_SWEEP))})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for all sampling (default: 0)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch CPU threads (default: 1; AIS and the gaps run many small operations, fastest on one thread, "
        "and a second thread on a busy machine made them ten times slower)",
    )
    parser.add_argument("--ais", action="store_true", help="annealed importance sampling on the first examples")
    parser.add_argument("--ais-examples", type=int, default=100, metavar="N", help="AIS examples (default: 100)")
    parser.add_argument("--gaps", action="store_true", help="the approximation and amortisation gaps")
    parser.add_argument(
        "--gap-examples",
        type=int,
        default=100,
        metavar="N",
        help="gap examples (default: 100); log p(x) from AIS when --ais covers them, else from IS",
    )
    parser.add_argument(
        "--bdmc", type=int, default=0, metavar="N", help="BDMC bounds on N simulated data sets (default: 0, off)"
    )
    parser.add_argument(
        "--sbc",
        type=int,
        default=None,
        metavar="N",
        help="simulation-based calibration of q(z|x) on N simulations z* ~ p(z), x* ~ p(x|z*): ranks of z* among "
        f"draws of q(z|x*), a uniformity test per latent coordinate, and DIR/{SBC_FIGURE} (default: off)",
    )
    parser.add_argument(
        "--sbc-draws",
        type=int,
        default=DEFAULT_DRAWS,
        metavar="L",
        help=f"SBC: draws of q(z|x*) per simulation; ranks are 0..L (default: {DEFAULT_DRAWS})",
    )
    parser.add_argument(
        "--sbc-bins",
        type=int,
        default=DEFAULT_BINS,
        metavar="B",
        help=f"SBC: rank histogram bins, a divisor of L + 1 (default: {DEFAULT_BINS})",
    )
    parser.add_argument(
        "--sbc-alpha",
        type=float,
        default=DEFAULT_ALPHA,
        metavar="A",
        help=f"SBC: familywise level of the uniformity tests, Bonferroni over coordinates (default: {DEFAULT_ALPHA})",
    )
    parser.add_argument(
        "--collapse", action=argparse.BooleanOptionalAction, default=True, help="I(x; z) and KL(q(z) || p(z))"
    )
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars (on a terminal)"
    )
    _add_options(parser, AISOptions, "ais", "AIS and BDMC (--ais, --bdmc)")
    _add_options(parser, GapOptions, "gap", "inference gaps (--gaps)")
    add_model_module_options(parser)
    parser.set_defaults(run=run)
    return parser


def _row(label: str, value: float, stderr: float | None = None, note: str = "") -> str:
    se = f" ± {stderr:7.3f}" if stderr is not None and math.isfinite(stderr) else " " * 10
    return f"  {label:<42s} {value:11.3f}{se}  {note}".rstrip()


def _spread(std: float | None) -> str:
    """The between-example spread of a per-example quantity, where there is one (not an error of the average)."""
    return f"; spread over examples {std:.2f}" if std is not None and math.isfinite(std) else ""


def _agreement(difference: float, stderr: float) -> str:
    """How AIS and IS compare, at two standard errors."""
    if difference > 2 * stderr:
        return "AIS above IS: IS has not converged at this K"
    if difference < -2 * stderr:
        return "AIS below IS: AIS needs more steps"
    return "agree within 2 SE"


def _bound_rows(result: Evaluation) -> list[str]:
    lines = []
    if result.ais is not None:
        a, o = result.ais, result.ais["options"]
        se = math.hypot(a["stderr"], a["is_stderr"])
        lines += [
            f"  on the first {a['num_examples']} test examples:",
            _row("IS log p(x)", a["is_log_likelihood"], a["is_stderr"], f"K = {result.num_samples}"),
            _row(
                "AIS log p(x)",
                a["log_likelihood"],
                a["stderr"],
                f"T = {o['num_steps']}, {o['num_chains']} "
                f"chains from the {o['start']}, acceptance {a['acceptance']:.2f}",
            ),
            _row("AIS - IS", a["ais_minus_is"], se, _agreement(a["ais_minus_is"], se)),
        ]
    if result.gaps is not None:
        g = result.gaps
        lines += [
            f"  on the first {g['num_examples']} test examples:",
            _row("ELBO(q_encoder)", g["elbo_encoder"]),
            _row("ELBO(q*), optimised per example", g["elbo_optimal"], None, f"{g['num_steps']} Adam steps"),
            _row(
                "approximation gap log p(x) - ELBO(q*)",
                g["approximation_gap"],
                g["approximation_gap_stderr"],
                f"log p(x) from {g['log_likelihood_source']}",
            ),
            _row("amortisation gap ELBO(q*) - ELBO(q_enc)", g["amortization_gap"], g["amortization_gap_stderr"]),
            *_khat_rows(g.get("psis"), "the gaps' log p(x), importance-sampled from (q* + q_enc) / 2,"),
        ]
    if result.bdmc is not None:
        b = result.bdmc
        lines += [
            f"  BDMC on {b['num_examples']} data sets simulated from the model:",
            _row("lower bound (forward AIS)", b["lower"], b["lower_stderr"]),
            _row("upper bound (reverse AIS)", b["upper"], b["upper_stderr"]),
            _row("upper - lower", b["upper_minus_lower"], None, "bounds the AIS error on such data"),
        ]
    return lines


def _khat_rows(psis: dict[str, Any] | None, what: str) -> list[str]:
    """The k-hat summary line, and its warning when k-hat says ``what`` is unreliable (``pyro_vae.psis``)."""
    if psis is None:
        return []
    summary = KhatSummary(**psis)
    warning = summary.warning(what)
    return [f"  {summary.line()}", *([f"  {warning}"] if warning else [])]


def format_evaluation(result: Evaluation, title: str) -> str:
    ll_note = f"K = {result.num_samples}"
    if math.isfinite(result.log_likelihood_std):
        ll_note += f"; spread over examples {result.log_likelihood_std:.2f}"
    lines = [
        title,
        f"  {'':<42s} nats/example  ± SE",
        _row("IS log p(x)", result.log_likelihood, result.log_likelihood_stderr, ll_note),
        _row("test ELBO", result.elbo),
        _row("gap log p(x) - ELBO", result.gap),
        f"  {'ESS of the importance weights':<42s} mean {result.ess_mean:.1f}, min {result.ess_min:.1f} "
        f"of {result.num_samples}",
        *_khat_rows(result.psis, "the IS log p(x)"),
        "  IS log p(x) from the first K samples:",
        *[_row(f"  K = {r['num_samples']}", r["log_likelihood"], r["stderr"]) for r in result.sweep],
        *_bound_rows(result),
        *_sbc_rows(result.sbc),
        _row("KL(q(z|x) || p(z))", result.kl_total),
    ]
    if result.collapse is not None:
        c = result.collapse
        lines += [
            _row(
                "  = I(x; z)",
                c["mutual_information"],
                c["mutual_information_stderr"],
                f"<= log N = {c['max_mutual_information']:.2f}{_spread(c.get('mutual_information_example_std'))}",
            ),
            _row(
                "  + KL(q(z) || p(z)), marginal",
                c["marginal_kl"],
                c["marginal_kl_stderr"],
                _spread(c.get("marginal_kl_example_std")).removeprefix("; "),
            ),
        ]
    lines.append(f"  active units       {result.active_units:>5d} of {len(result.posterior_mean_variance)}")
    per_site = result.active_units_per_site or {}
    if len(per_site) > 1:  # a hierarchical VAE: per layer, in the order of the table below
        parts = [f"{name} {v['active']} of {v['dimensions']}" for name, v in per_site.items()]
        lines.append(f"  per latent site    {', '.join(parts)}")
    message = collapse_message(
        result.active_units, len(result.posterior_mean_variance), result.kl_total, result.kl_per_dimension
    )
    lines += [f"  {message}", ""] if message else [""]
    lines.append("  dim   KL (nats)   Var_x E[z_j|x]   active")
    kl = result.kl_per_dimension
    for j, var in enumerate(result.posterior_mean_variance):
        kl_text = f"{kl[j]:9.3f}" if kl is not None else "      n/a"
        lines.append(f"  {j:3d}   {kl_text}   {var:14.4f}   {'yes' if var > ACTIVE_UNIT_THRESHOLD else 'no'}")
    if kl is None:
        lines.append(
            "  (q or the prior does not factorise over the J dimensions (a mixture, one-hot codes), so only the total "
            "KL is defined)"
        )
    return "\n".join(lines)


def _sbc_options(args: argparse.Namespace) -> SBCOptions | None:
    if args.sbc is None:
        return None
    try:
        return SBCOptions(args.sbc, args.sbc_draws, args.sbc_bins, args.sbc_alpha)
    except ValueError as err:
        raise UserError(f"{err}; see --help for the --sbc-* options") from None


def _sbc_rows(sbc: dict[str, Any] | None) -> list[str]:
    """SBC's printed lines: settings, the smallest p-values, and what is flagged (Talts et al. 2018)."""
    if sbc is None:
        return []
    p = sbc["p_values"]
    worst = ", ".join(f"{name} {value:.2g}" for name, value in sorted(p.items(), key=lambda kv: kv[1])[:8])
    flagged = sbc["flagged"]
    verdict = (
        f"flagged: {', '.join(flagged)}: q(z|x) is not calibrated there (see the histogram's shape)"
        if flagged
        else "no coordinate flagged: the ranks are consistent with a calibrated q(z|x)"
    )
    return [
        f"  SBC of q(z|x) on {sbc['num_simulations']} simulations from the model, {sbc['num_posterior_draws']} draws "
        f"each, {sbc['num_bins']} rank bins; chi-square per coordinate, {sbc['correction']}",
        f"    smallest p-values: {worst}",
        f"    {verdict}",
    ]


def _check(args: argparse.Namespace) -> None:
    check_which(args)
    counts = {
        "--ll-samples": args.num_samples,
        "--ais-examples": args.ais_examples,
        "--gap-examples": args.gap_examples,
        "--max-rows": args.max_rows,
    }
    for flag, value in counts.items():
        if value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if args.num_examples is not None and args.num_examples < 1:
        raise UserError(f"--examples must be >= 1, got {args.num_examples}")
    if args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if args.bdmc < 0:
        raise UserError(f"--bdmc must be >= 0 (simulated data sets), got {args.bdmc}")
    if args.sbc is not None and args.sbc < 1:
        raise UserError(f"--sbc must be >= 1 (simulations), got {args.sbc}")
    if any(k < 1 for k in args.sweep):
        raise UserError("--sweep values must be >= 1")


def _write(out_dir: Path, record: dict[str, Any], which: str = "last") -> Path:
    """The one place evaluate writes: DIR/evaluation.json (DIR/evaluation_best.json for best.pt), atomically."""
    out = out_dir / result_name(OUTPUT, which)
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    return out


def _record(
    args: argparse.Namespace,
    result: Evaluation,
    position: dict[str, Any],
    loaded: Any,
    x: torch.Tensor,
    estimates: list[ImportanceEstimate],
) -> None:
    """Print the bits per dimension, write evaluation.json (whole) and keep the epoch's score; ``loaded``: the run
    evaluated (None for a --model-module's model, which has neither a likelihood's levels nor a learning curve)."""
    likelihood = None if loaded is None else getattr(loaded.model, "likelihood", loaded.model)
    bits = {} if loaded is None else _bits(likelihood, loaded.data.levels, result, int(x[0].numel()))
    if bits:
        print(f"  bits per dimension: test ELBO {bits['elbo']:.4f}, IS log p(x) {bits['log_likelihood']:.4f}")
    record = {**position, **result.to_dict(), "bits_per_dim": bits or None, "partial": False}
    print(f"wrote {_write(args.dir, record, args.which)}")
    if loaded is not None and estimates:
        _keep_score(args, loaded, estimates[0])


def _keep_score(args: argparse.Namespace, loaded: Any, estimate: ImportanceEstimate) -> None:
    """Keep each image's ELBO and log p(x) of this epoch in RUN/scores/ (``pyro_vae.score_history``), for
    ``pyro-vae forecast --gap-trend``: evaluation.json goes at the next resume, the scores stay. Only a checkpoint
    at an epoch's end is on the learning curve (a mid-epoch one has no test ELBO to tie the score to)."""
    test_elbo = next((m.get("test_elbo") for m in loaded.metrics if m.get("epoch") == loaded.epoch), None)
    if loaded.step or not isinstance(test_elbo, float):
        return
    path = write_score(
        args.dir,
        epoch=loaded.epoch,
        checkpoint=args.which,
        num_samples=args.num_samples,
        elbo=estimate.elbo.tolist(),
        log_px=estimate.log_likelihood.tolist(),
        test_elbo=test_elbo,
    )
    print(f"wrote {path} (each image's ELBO and log p(x), for pyro-vae forecast --gap-trend)")


def run(args: argparse.Namespace) -> int:
    # The run's lock for as long as this may write into it (one writer per run; pyro_vae.run_dir).
    with RunDir.lock(args.dir, "pyro-vae evaluate", create=bool(args.model_module)) as run_dir:
        return _run(args, run_dir)


def _bits(likelihood: Any, levels: int | None, result: Evaluation, dims: int) -> dict[str, float]:
    """Bits per dimension of the test ELBO and IS log p(x), for a non-binary likelihood (convention: pyro_vae.bits)."""
    bits = {}
    for key, nats in (("elbo", result.elbo), ("log_likelihood", result.log_likelihood)):
        value = bits_per_dim_of(likelihood, levels, nats, dims)
        if value is not None:
            bits[key] = value
    return bits


def _settings(args: argparse.Namespace, position: dict[str, Any], num_examples: int) -> dict[str, Any]:
    """What makes two evaluations the same one: a partial record is reused only when these are equal."""
    names = ("num_samples", "sweep", "seed", "ais", "ais_examples", "gaps", "gap_examples", "bdmc", "collapse", "sbc")
    options = {k: v for k, v in vars(args).items() if k.startswith(("ais_", "gap_", "sbc_"))}
    return {
        **{k: getattr(args, k) for k in names},
        **options,
        **position,
        "num_examples": num_examples,
        "model_module": args.model_module,
    }


def _reusable(out_dir: Path, settings: dict[str, Any], which: str = "last") -> dict[str, Any] | None:
    """The partial record in DIR/evaluation.json (or _best) of an interrupted evaluation with these ``settings``, or
    None."""
    try:
        record = json.loads((out_dir / result_name(OUTPUT, which)).read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(record, dict) and record.get("partial") is True and PER_EXAMPLE in record):
        return None
    if json.loads(json.dumps(settings)) != record.get("settings"):  # compared as JSON stores them
        print(
            f"not reusing the partial evaluation in {out_dir / result_name(OUTPUT, which)}: it was made with other "
            "options",
            file=sys.stderr,
        )
        return None
    return record


def _run_labelled(args: argparse.Namespace, run_dir: RunDir, loaded: Any) -> int:
    """``evaluate`` of a conditional or M2 run (``pyro_vae.semi_supervised``): ELBO, IS log-likelihood with y
    handled exactly, and M2's classifier accuracy; written to DIR/evaluation.json."""
    run_dir.check_writable()
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    result = evaluate_labelled(loaded.model, loaded.guide, loaded.data, args.num_samples, args.num_examples)
    print(f"{args.dir}: {loaded.data.name}, {loaded.position}, {result.num_examples} test examples ({result.model})")
    print("\n".join(result.lines()))
    position = {"checkpoint": args.which, "epoch": loaded.epoch, "step": loaded.step}
    out = _write(args.dir, {**position, **result.to_dict(), "partial": False}, args.which)
    print(f"wrote {out}")
    return 0


def _run(args: argparse.Namespace, run_dir: RunDir) -> int:
    _check(args)
    ais_options = _options(args, AISOptions, "ais")
    gap_options = _options(args, GapOptions, "gap")
    sbc_options = _sbc_options(args)
    if args.model_module:
        model, guide = load_model_module(args.model_module)
        x, data_name = module_test_data(args)
        check_module_fits(model, guide, x, data_name)
        run_dir.check_writable()
        where, position = f"{args.model_module} on {data_name}", {}
    else:
        loaded = load_run(args.dir, which=args.which)
        if reads_labels(loaded.model):
            return _run_labelled(args, run_dir, loaded)
        model, guide, x = loaded.model, loaded.guide, loaded.data.test_x_eval
        at = f"{loaded.position}" + (" (stopped mid-epoch)" if loaded.step else "") + _CHECKPOINT[args.which]
        position = {"checkpoint": args.which, "epoch": loaded.epoch, "step": loaded.step}
        where = f"{args.dir}: {loaded.data.name}, {at}"
    if args.num_examples is not None:
        x = x[: args.num_examples]
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    settings = _settings(args, position, int(x.shape[0]))
    output = args.dir / result_name(OUTPUT, args.which)
    resume = _reusable(args.dir, settings, args.which)
    if resume:
        print(
            f"reusing the finished sections ({', '.join(resume['sections_done'])}) of the interrupted evaluation in "
            f"{output}",
            file=sys.stderr,
        )

    def keep(partial: Evaluation, done: list[str], estimate: ImportanceEstimate) -> None:
        """Write what is finished, marked partial, with what a resumed evaluation needs."""
        record = {**position, **partial.to_dict(), "partial": True, "sections_done": done, "settings": settings}
        _write(args.dir, {**record, PER_EXAMPLE: per_example_record(estimate)}, args.which)
        finished[:] = done
        estimates[:] = [estimate]

    estimates: list[ImportanceEstimate] = []

    finished: list[str] = list(resume["sections_done"]) if resume else []
    try:
        result = evaluate(
            model,
            guide,
            x,
            num_samples=args.num_samples,
            max_rows=args.max_rows,
            sweep=args.sweep,
            ais_options=ais_options if args.ais or args.bdmc else None,
            ais_examples=args.ais_examples if args.ais else 0,
            gap_options=gap_options if args.gaps else None,
            gap_examples=args.gap_examples,
            collapse=args.collapse,
            bdmc_examples=args.bdmc,
            progress=args.progress,
            on_section=keep,
            resume=resume,
            sbc=sbc_options,
        )
    except KeyboardInterrupt as err:
        if not finished:
            raise
        stopped = KeyboardInterrupt(
            f"interrupted; the finished sections ({', '.join(finished)}) are in {output}, marked "
            "partial: run the same pyro-vae evaluate again to finish the rest"
        )
        stopped.signum = getattr(err, "signum", signal.SIGINT)  # type: ignore[attr-defined]
        raise stopped from None
    print(format_evaluation(result, f"{where}, {result.num_examples} test examples"))
    _record(args, result, position, None if args.model_module else loaded, x, estimates)
    if result.sbc is not None:
        print(f"wrote {plot_sbc(result.sbc, args.dir / result_name(SBC_FIGURE, args.which), where)}")
    return 0
