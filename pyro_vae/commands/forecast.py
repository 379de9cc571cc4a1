"""``pyro-vae forecast RUN``: when will a run's ELBO reach a target? A learning-curve fit (``pyro_vae.learning_curve``).

The run's per-epoch ELBO (``metrics.jsonl``; the epochs of a KL warm-up, at beta < 1, left out) is fitted with ELBO(t) =
A - b t^(-c); the command prints the epoch at which the fit reaches the target with a bootstrap interval, the ELBO at
convergence A, and a back-test (the fit on the first half of the epochs predicting the last few). A target log p(x)
(``--log-px``, e.g. a paper's number) becomes the ELBO target log p(x) - gap, with the gap log p(x) - ELBO that
``pyro-vae evaluate`` measured at the run's last epoch (or ``--gap``), taken as constant from there on. A power law
in epochs knows nothing of a change of learning rate, so the epochs at which the run's schedule (``config.json``)
changes the rate inside the back-test's span or ahead of the curve are printed beside the forecast, read from torch's
own scheduler (``pyro_vae.step.scheduled_rates``). Nothing is written: the run is only read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from pyro_vae.checks import check_number
from pyro_vae.config import TrainConfig
from pyro_vae.errors import UserError
from pyro_vae.gap_trend import GapTrend, gap_trend
from pyro_vae.learning_curve import MIN_POINTS, Forecast, PowerLawFit, fit_power_law, forecast
from pyro_vae.run_dir import CONFIG, METRICS
from pyro_vae.score_history import SCORES, read_scores
from pyro_vae.step import scheduled_rates

EVALUATION = "evaluation.json"


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help="fit a run's learning curve and say at which epoch it reaches a target ELBO or log p(x)",
        description="Fit ELBO(t) = A - b t^(-c) to the run's per-epoch ELBO and print the epoch at which it reaches "
        "the target (with a moving-block bootstrap interval), A (the ELBO at convergence) and a back-test. An "
        "extrapolation: it assumes the run goes on with the same protocol.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="run directory written by pyro-vae train")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--target", type=float, metavar="ELBO", help="the ELBO (nats per example) to reach")
    target.add_argument(
        "--log-px",
        type=float,
        metavar="NATS",
        help="the log p(x) to reach (e.g. a paper's); needs RUN/evaluation.json of the last epoch, or --gap",
    )
    parser.add_argument(
        "--gap",
        type=float,
        default=None,
        help="log p(x) - ELBO to use with --log-px (None: from RUN/evaluation.json, written by pyro-vae evaluate)",
    )
    parser.add_argument(
        "--gap-trend",
        action="store_true",
        help="with --log-px: let the gap follow its linear trend in the ELBO, fitted over the run's IS scores at 2 or "
        "more epochs (RUN/scores/, kept by each pyro-vae evaluate), instead of holding it at the last epoch's",
    )
    parser.add_argument(
        "--within",
        type=float,
        default=0.0,
        metavar="NATS",
        help="forecast when the run comes within NATS of the target instead of meeting it (default: 0.0)",
    )
    parser.add_argument(
        "--metric",
        choices=("test_elbo", "val_elbo"),
        default="test_elbo",
        help="the curve fitted: the test ELBO, or the validation ELBO of a run trained with --validation "
        "(default: test_elbo)",
    )
    parser.add_argument(
        "--from-epoch",
        type=int,
        default=3,
        help="fit epochs from this one on (the first epochs' fast fall is not part of the power law) (default: 3)",
    )
    parser.add_argument("--level", type=float, default=0.9, help="the interval's coverage (default: 0.9)")
    parser.add_argument("--resamples", type=int, default=400, help="bootstrap resamples (default: 400)")
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default: 0)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of text")
    parser.set_defaults(run=run)
    return parser


def _curve(run_dir: Path, metric: str, first: int) -> tuple[list[float], list[float]]:
    path = run_dir / METRICS
    if not path.is_file():
        raise UserError(f"no {METRICS} in {run_dir}: is it a run directory written by pyro-vae train?")
    epochs, values = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path} line {number} is not JSON") from None
        value = record.get(metric)
        # A KL warm-up's epochs (beta < 1) train another objective than the ELBO: they are not on its curve.
        if record.get("beta", 1.0) < 1.0:
            continue
        if isinstance(value, (int, float)) and record.get("epoch", 0) >= first:
            epochs.append(float(record["epoch"]))
            values.append(float(value))
    if metric == "val_elbo" and not values and path.stat().st_size:
        raise UserError(f"{run_dir} has no val_elbo: only a run trained with --validation N has one")
    if len(values) < MIN_POINTS:
        raise UserError(
            f"{run_dir} has {len(values)} epochs of {metric} at beta = 1 from epoch {first} on; the fit needs at "
            f"least {MIN_POINTS} (train longer, or lower --from-epoch)"
        )
    return epochs, values


def _gap(run_dir: Path, last_epoch: float) -> tuple[float, dict[str, Any]]:
    """The gap log p(x) - ELBO of RUN/evaluation.json, which must be of the curve's last epoch, and the record."""
    path = run_dir / EVALUATION
    if not path.is_file():
        raise UserError(f"--log-px needs the gap log p(x) - ELBO: run pyro-vae evaluate {run_dir} first, or give --gap")
    try:
        record = json.loads(path.read_text())
        gap, epoch = float(record["log_likelihood"]) - float(record["elbo"]), record["epoch"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{path} has no log_likelihood, elbo and epoch; run pyro-vae evaluate again") from None
    if epoch != last_epoch:
        raise UserError(
            f"{path} is from epoch {epoch} but the curve ends at epoch {last_epoch:.0f}: run pyro-vae evaluate "
            f"{run_dir} again, or give --gap"
        )
    return gap, record


def _trend(
    run_dir: Path, evaluation: dict[str, Any], fit: PowerLawFit, level: float, seed: int
) -> tuple[GapTrend, list[int]]:
    """The gap's trend over the run's scores of the same K and test images as its evaluation.json (the last one),
    against the fitted curve's ELBO at their epochs (``pyro_vae.gap_trend``: the measured one jitters)."""
    try:
        records = [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines()]
        scores = read_scores(
            run_dir,
            checkpoint="last",
            num_samples=int(evaluation["num_samples"]),
            num_examples=int(evaluation["num_examples"]),
            metrics=records,
        )
    except (KeyError, TypeError) as err:
        raise UserError(f"{run_dir / EVALUATION} lacks {err}; run pyro-vae evaluate again") from None
    except ValueError as err:
        raise UserError(str(err)) from None
    epochs = [s.epoch for s in scores]
    if len(scores) < 2 or epochs[-1] != evaluation["epoch"]:
        found = ", ".join(map(str, epochs)) or "none"
        raise UserError(
            f"--gap-trend needs IS scores of the same K and test images at 2 or more epochs, the last one included, "
            f"in {run_dir / SCORES} (found epochs: {found}): run pyro-vae evaluate {run_dir} again after more epochs"
        )
    try:
        elbo = fit.predict(epochs)
        return gap_trend(elbo, [s.log_px for s in scores], level=level, seed=seed), epochs
    except ValueError as err:
        raise UserError(f"--gap-trend: {err}") from None


TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
#: How far ahead rate changes are looked for: this many times the last epoch, or the forecast's epoch when later.
AHEAD = 10
#: The furthest epoch looked at (stepping a scheduler costs microseconds an epoch).
HORIZON_MAX = 20_000


def _rate_changes(run_dir: Path, half: float, last: float, horizon: float) -> dict[str, Any] | None:
    """The run's schedule and the epochs after which it changes the learning rate, in (half, last) (the back-test's
    span) and in [last, horizon]; None without a config.json (a curve written by hand) or with a
    constant rate."""
    path = run_dir / CONFIG
    if not path.is_file():
        return None
    try:
        # The fields a config.json from before a field existed lacks take TrainConfig's defaults, as a resume does;
        # the config is not built whole, which would import the plugins its components came from.
        saved = {**TRAIN_DEFAULTS, **json.loads(path.read_text())}
        schedule = saved["lr_schedule"]
        options = {
            "epochs": int(saved["epochs"]),
            "step_epochs": int(saved["lr_step_epochs"]),
            "gamma": float(saved["lr_gamma"]),
            "milestones": tuple(int(m) for m in saved["lr_milestones"]),
        }
        lr = float(saved["lr"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise UserError(f"{path} is not a run's config (a JSON object of its fields): is the run damaged?") from None
    if schedule == "constant":
        return None
    rates = scheduled_rates(schedule, lr, int(min(horizon, HORIZON_MAX)) + 1, **options)
    if rates is None:
        return {"schedule": schedule, "in_backtest": None, "ahead": None, "horizon": None}
    # rates[e] is epoch e + 1's: the rate changes after epoch e when it differs from epoch e's, rates[e - 1]
    changes = [e for e in range(1, len(rates)) if not math.isclose(rates[e], rates[e - 1], rel_tol=1e-9)]
    return {
        "schedule": schedule,
        "in_backtest": [e for e in changes if half < e < last],
        "ahead": [e for e in changes if e >= last],
        "horizon": len(rates) - 1,
    }


def _listed(epochs: list[int], shown: int = 4) -> str:
    text = ", ".join(f"{e:,}" for e in epochs[:shown])
    return text if len(epochs) <= shown else f"{text} and {len(epochs) - shown:,} more"


def _print_rate_changes(changes: dict[str, Any], half: float, last: float) -> None:
    name = f"learning rate ({changes['schedule']} schedule)"
    if changes["ahead"] is None:
        print(
            f"{name}: it drops when the test ELBO stalls, which no fit of the curve foresees; the forecast assumes "
            "the curve keeps its shape"
        )
        return
    if changes["in_backtest"]:
        print(
            f"{name}: changes after epoch {_listed(changes['in_backtest'])}, between the back-test's half "
            f"({half:.0f}) and the curve's end ({last:.0f}): part of the back-test's error may be the change of "
            "rate, not the fit"
        )
    if changes["ahead"]:
        print(
            f"{name}: changes after epoch {_listed(changes['ahead'])} (up to epoch {changes['horizon']:,}), ahead "
            "of the curve: a power law in epochs does not model a change of rate, so the forecast assumes the "
            "curve keeps the shape it had"
        )


def _trend_record(trend: GapTrend, epochs: list[int], fc: Forecast, ref: dict[str, float]) -> dict[str, Any]:
    """The trend (``pyro_vae.gap_trend``) and log p(x) at the fitted asymptote with the gap following it from the
    last epoch's (``ref``: the fitted ELBO there and log p(x)), with two intervals: the fit's (its asymptote's, at
    the trend's slope) and the slope's (at the fitted asymptote)."""
    at_ends = sorted(trend.log_px_at(fc.fit.asymptote, **ref, slope=s) for s in (trend.slope_low, trend.slope_high))
    of_fit = [trend.log_px_at(a, **ref) for a in (fc.asymptote_low, fc.asymptote_high)]
    return {
        "epochs": epochs,
        **trend.summary(),
        "asymptote_log_px": trend.log_px_at(fc.fit.asymptote, **ref),
        "asymptote_interval_fit": sorted(of_fit),
        "asymptote_interval_slope": at_ends,
    }


def _print_trend(record: dict[str, Any], pct: str) -> None:
    low, high = record["slope_interval"]
    epochs = ", ".join(f"{e:,}" for e in record["epochs"])
    print(
        f"gap trend: log p(x) - ELBO moves by {record['slope']:+.3f} ({pct} interval {low:+.3f} to {high:+.3f}) per "
        f"nat of the fitted ELBO over the scores at epochs {epochs}, which span {record['elbo_span']:.2f} nats of "
        "it: carried beyond that span, it is an extrapolation"
    )
    if record["residual_sd"] is None:
        print(
            "gap trend: with two scores the epochs' own jitter of log p(x) cannot be measured, so the interval "
            "covers the images' part only: score a third epoch"
        )
    if record["backtest_error"] is not None:
        print(
            f"gap trend back-test: fitted without the last score, it predicts that score's log p(x) "
            f"{record['backtest_error']:+.2f} nats off (SE over the images {record['backtest_se']:.2f}; the scores "
            f"scatter about the line by {record['residual_sd']:.2f})"
        )


def _epochs(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:,.0f}"


def _check(args: argparse.Namespace) -> None:
    check_number(args.level, "--level", low=0, high=1, bounds="()")
    check_number(args.resamples, "--resamples", integer=True, low=10)
    check_number(args.within, "--within", low=0)
    if args.gap is not None and args.log_px is None:
        raise UserError("--gap goes with --log-px")
    if args.gap_trend and (args.log_px is None or args.gap is not None):
        raise UserError("--gap-trend goes with --log-px and reads the gap from the run's scores (no --gap)")
    for name in ("target", "log_px", "gap"):
        value = getattr(args, name)
        if value is not None:
            check_number(value, f"--{name.replace('_', '-')}")
    if not args.run_dir.is_dir():
        raise UserError(f"run directory {args.run_dir} does not exist")


def run(args: argparse.Namespace) -> int:
    _check(args)
    epochs, values = _curve(args.run_dir, args.metric, args.from_epoch)
    gap, evaluation, trend, reference = args.gap, None, None, None
    if args.log_px is not None and gap is None:
        gap, evaluation = _gap(args.run_dir, epochs[-1])
    target = (args.target if args.log_px is None else args.log_px - gap) - args.within
    if args.gap_trend:  # with --log-px and without --gap (_check), so evaluation.json was read
        fit = fit_power_law(epochs, values)
        trend = _trend(args.run_dir, evaluation, fit, args.level, args.seed)
        # log p(x) = ELBO + gap at the last epoch, moving by 1 + slope per nat of the fitted ELBO from there
        reference = {"elbo_ref": float(fit.predict(epochs[-1])), "log_px_ref": values[-1] + gap}
        target = trend[0].elbo_for(args.log_px - args.within, **reference)
    fc = forecast(epochs, values, target, level=args.level, resamples=args.resamples, seed=args.seed)
    last = epochs[-1]
    # the asymptote is a forecast too, so the changes ahead are looked for up to 10 times the last epoch at least
    finite = [e for e in (fc.epochs, fc.epochs_high) if math.isfinite(e)]
    # no back-test made (too short a first half): no span for a change to fall in
    half = last / 2 if fc.backtest_error is not None else last
    changes = _rate_changes(args.run_dir, half, last, max(finite + [AHEAD * last]))
    record: dict[str, Any] = {
        "metric": args.metric,
        "epochs_fitted": [epochs[0], epochs[-1]],
        "last": values[-1],
        "target_elbo": target,
        "log_px": args.log_px,
        "within": args.within,
        "gap": gap,
        "fit": {"asymptote": fc.fit.asymptote, "scale": fc.fit.scale, "exponent": fc.fit.exponent},
        "residual_sd": fc.fit.residual_sd,
        "epochs": fc.epochs,
        "epochs_interval": [fc.epochs_low, fc.epochs_high],
        "epochs_more": fc.epochs_short,
        "asymptote_interval": [fc.asymptote_low, fc.asymptote_high],
        "asymptote_identified": fc.identified,
        "level": fc.level,
        "backtest_error": fc.backtest_error,
        "backtest_window": fc.backtest_window,
        "lr_changes": changes,
        "gap_trend": None if trend is None else _trend_record(trend[0], trend[1], fc, reference),
    }
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    _print(args, record, fc, epochs, values)
    if changes is not None:
        _print_rate_changes(changes, half, last)
    return 0


def _print(
    args: argparse.Namespace, record: dict[str, Any], fc: Forecast, epochs: list[float], values: list[float]
) -> None:
    """The forecast as text (``record``: what --json prints)."""
    pct = f"{100 * fc.level:g}%"
    fit, gap, target, trend = fc.fit, record["gap"], record["target_elbo"], record["gap_trend"]
    print(
        f"{args.metric}: epochs {epochs[0]:.0f}-{epochs[-1]:.0f}, last {values[-1]:.2f}; fit "
        f"A - b t^(-c) with A = {fit.asymptote:.2f}, b = {fit.scale:.3g}, c = {fit.exponent:.3g} "
        f"(residual sd {fit.residual_sd:.3f})"
    )
    if trend is not None:
        _print_trend(trend, pct)
        print(
            f"target: log p(x) {args.log_px - args.within:.2f} at ELBO {target:.2f} (the gap {gap:.2f} at the last "
            "epoch, following its trend)"
        )
    elif gap is not None:
        print(f"target: log p(x) {args.log_px - args.within:.2f} = ELBO {target:.2f} + gap {gap:.2f}")
    else:
        print(f"target: ELBO {target:.2f}")
    interval = f"{pct} interval {_epochs(fc.epochs_low)} to {_epochs(fc.epochs_high)}"
    if math.isinf(fc.epochs):
        print(f"the fit never reaches the target: it converges below it ({interval})")
    else:
        print(f"reached at epoch {_epochs(fc.epochs)} ({interval}): {_epochs(fc.epochs_short)} more epochs")
    shift = gap or 0.0
    what = "log p(x)" if gap is not None else "ELBO"
    if fc.identified and trend is not None:
        (fit_low, fit_high), (slope_low, slope_high) = (
            trend["asymptote_interval_fit"],
            trend["asymptote_interval_slope"],
        )
        print(
            f"log p(x) at convergence, the gap following its trend: {trend['asymptote_log_px']:.2f} ({pct} interval "
            f"of the fit {fit_low:.2f} to {fit_high:.2f}, of the trend's slope {slope_low:.2f} to {slope_high:.2f}); "
            f"with the gap held at {gap:.2f} it would be {fit.asymptote + gap:.2f}"
        )
    elif fc.identified:
        print(
            f"{what} at convergence: {fit.asymptote + shift:.2f} ({pct} interval {fc.asymptote_low + shift:.2f} to "
            f"{fc.asymptote_high + shift:.2f})"
        )
    else:
        print(
            f"{what} at convergence: not identified: the exponent is at its floor (c = {fit.exponent:.3g}), so over "
            "these epochs the curve climbs like log t and its limit cannot be read from it (train longer)"
        )
    if fc.backtest_error is None:
        print("back-test: the first half of the curve is too short to fit")
    else:
        print(
            f"back-test: fitted on epochs up to {epochs[-1] / 2:.0f}, the fit's ELBO over the last "
            f"{fc.backtest_window} epochs ({epochs[-fc.backtest_window]:.0f} to {epochs[-1]:.0f}) is "
            f"{fc.backtest_error:+.2f} nats from the measured one on average"
        )
