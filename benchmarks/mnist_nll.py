"""Test log-likelihood on binarised MNIST, next to published anchors: a benchmark with a stated protocol.

Protocol (the same for every row):

- data: MNIST, the official 60,000 / 10,000 split (torchvision's files; ``--data-dir`` holds MNIST/raw/);
- training: dynamic binarisation, a fresh x ~ Bernoulli(grey pixels) every epoch (``VAEData.train_epoch``), Adam
  (lr 1e-3), batch 100, seed 0, no KL warm-up, Bernoulli likelihood, z_dim = 50 (VampPrior: K = 100 pseudo-inputs
  started at training images, against Tomczak & Welling's 500, for CPU time), through ``pyro_vae.train`` (so
  every row is an ordinary run directory with its checkpoint and metrics.jsonl);
- test set: binarised once with the project's fixed seed (``pyro_vae.data.TEST_BINARIZE_SEED``); the test ELBO
  of every epoch is over all 10,000 images (one z per image, fixed evaluation draws);
- test log p(x): importance sampling with the guide as proposal, K = 5000 (``pyro_vae.evaluation``, Burda et al.
  2015), over the first ``--eval-examples`` test images (all 10,000 by default), seed 0. With fewer than all, the
  number reported for the whole test set is ELBO(all 10,000) + mean gap(subset), where gap_i = log p(x_i) -
  ELBO_K(x_i) from the same K samples: the gap varies far less from image to image than log p(x) itself (a control
  variate), so this is a much better estimate than the subset's own mean, which also carries the subset's
  difficulty (the first 1,000 test images are about 1.3 nats easier than the rest under these models). Its
  standard error is the gap's over the subset; the subset's own mean is reported too;
- scored checkpoint: the last one, except for a row trained with early stopping (``patience`` > 0: the tomczak2018
  rows), which is scored at ``best.pt``, its best validation epoch, as its paper reports (``scored_checkpoint``);
  ``--export`` exports that checkpoint;
- resumable: running again continues each row from its checkpoint; ``--cpu-minutes`` is each row's total CPU
  budget over all sessions (its CPU time is kept in OUT/ROW/bench.json), ``--epochs`` its cap.

    python benchmarks/mnist_nll.py --data-dir ../shared/data --out runs/mnist-nll --cpu-minutes 15
    python benchmarks/mnist_nll.py --out runs/mnist-nll --rows mlp-vamp-meanfield --cpu-minutes 30   # go on
    python benchmarks/mnist_nll.py --out runs/mnist-nll --report        # the table and curves from disk only
    python benchmarks/mnist_nll.py --out runs/mnist-nll --report --export bundles   # and each row's bundle

Rows by preset (``PRESET_ROWS``; asked for by name, ``--rows burda2016-vae``): ``burda2016-vae``,
``burda2016-iwae5``, ``burda2016-iwae50`` (``--preset burda2016`` with the ELBO, IWAE k = 5 and k = 50: batch 20, the
3^i-epoch schedule, 59,600 training images) against Burda et al.'s -86.76 / -85.54 / -84.78, and
``tomczak2018-vamp`` (``--preset tomczak2018``: gated layers, VampPrior K = 500, warm-up, early stopping on 10,000
validation images, the training images binarised once: static MNIST) against Tomczak & Welling's static-MNIST -85.57.
Their protocol is the preset's, not the one above. ``tomczak2018-vamp-dynamic`` is the same preset with dynamic
binarisation, against the same static-MNIST number: not a reproduction (a model trained on fresh draws every epoch
cannot overfit one draw and is expected to pass it); it shows what the binarisation is worth.

It prints a markdown table (epochs, CPU minutes, test ELBO, test log p(x) +- SE, the anchor and the distance to it, and
how far the budget falls short) and writes OUT/results.json and OUT/curves.png (test ELBO per epoch, anchors dashed).
How far a row falls short comes from ``pyro_vae.learning_curve.forecast``: the test ELBO curve from epoch 3 on is fitted
with ELBO(t) = A - b t^(-c), and the epoch at which it comes within 0.5 nats of the anchor (ELBO anchor - 0.5 - gap,
with the IS gap log p(x) - ELBO measured at the end taken as constant) is reported with a 90% moving-block bootstrap
interval, beside the fitted log p(x) at convergence (A + gap), a back-test (the same fit on the first half of the epochs
predicting the last epoch's ELBO: its error says how far to trust the extrapolation) and the CPU hours the missing
epochs cost at the row's measured CPU seconds per epoch. It is an extrapolation, to be read with its back-test.

The gap need not stay constant (a guide that keeps learning closes part of it). Every score keeps each image's ELBO
and log p(x) in OUT/ROW/scores/ (``pyro_vae.score_history``, as ``pyro-vae evaluate`` does), ``--score-every N``
scores a row every N epochs as it trains, and a row with scores at two or more epochs (same K and images) gets a
second table: the trend of log p(x) in the curve's fitted ELBO, as the gap's slope with its interval (the images'
paired bootstrap and the scores' scatter, ``pyro_vae.gap_trend``), its back-test, and log p(x) at convergence and
the epochs to within 0.5 nats with log p(x) moving by 1 + slope per nat of fitted ELBO from the last score instead of
by 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyro_vae import TrainConfig, VAEConfig, load_run, train  # noqa: E402
from pyro_vae.atomic import atomic_write_text  # noqa: E402
from pyro_vae.evaluation import importance_sample_stats  # noqa: E402
from pyro_vae.gap_trend import GapTrend, gap_trend  # noqa: E402
from pyro_vae.learning_curve import MIN_POINTS, Forecast, fit_power_law, forecast  # noqa: E402
from pyro_vae.run_dir import CHECKPOINT  # noqa: E402
from pyro_vae.score_history import read_scores, write_score  # noqa: E402

#: Published test log-likelihoods (nats, binarised MNIST) each row is compared with: (number, source).
ANCHORS = {
    "vae": (-89.78, "pythae VAE"),
    "vamp": (-85.79, "pythae VampPrior"),
    "iwae": (-86.82, "pythae IWAE"),
    # The rows run by preset (pyro_vae.presets) against their own papers' numbers.
    "burda-vae": (-86.76, "Burda et al. VAE k=1"),
    "burda-iwae5": (-85.54, "Burda et al. IWAE k=5"),
    "burda-iwae50": (-84.78, "Burda et al. IWAE k=50"),
    "tomczak-vamp": (-85.57, "Tomczak & Welling VampPrior, static MNIST"),
    # Burda et al. 2015, table 1: two stochastic layers (100 and 50 units), 3,280 epochs. A row is compared with
    # the paper's number for its own k (the k = 5 row with -83.89, not k = 50's -82.90).
    "vae-2": (-85.33, "Burda et al. 2-layer VAE"),
    "iwae5-2": (-83.89, "Burda et al. 2-layer IWAE k=5"),
}
#: Further published numbers, shown in the docs: Burda et al. 2015 (2 x 200 tanh, z = 50, 3,280 epochs) and
#: Tomczak & Welling 2018.
OTHER_ANCHORS = {
    "vae": (-86.76, "Burda et al. VAE"),
    "iwae": (-84.78, "Burda et al. IWAE k=50"),
    "vamp": (-85.57, "Tomczak & Welling"),
}

MLP = {"encoder": "mlp", "decoder": "mlp", "hidden": (200, 200)}
CONV = {"encoder": "conv", "decoder": "conv", "hidden": (256,)}
#: Burda et al.'s two-stochastic-layer architecture: x -> 2 x 200 tanh -> z1 (100) -> 2 x 100 tanh -> z2 (50) in the
#: bottom-up guide, and back in the model (docs/models.md); its z sizes override the protocol's z_dim.
TANH = {"activation": "tanh"}
HIER = {
    **MLP,
    "model": "hierarchical",
    "options": {
        "model": {"layers": 2, "sizes": (100, 50), "hidden": (100, 100), "activation": "tanh", "order": "bottomup"},
        "encoder": TANH,
        "decoder": TANH,
    },
}
#: name -> (VAEConfig fields, TrainConfig fields, anchor key).
ROWS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "mlp-standard-meanfield": (MLP, {"elbo": "meanfield"}, "vae"),
    "mlp-vamp-meanfield": (
        {**MLP, "prior": "vamp", "options": {"prior": {"components": 100, "init_from_data": True}}},
        {"elbo": "meanfield"},
        "vamp",
    ),
    "mlp-standard-iwae10": (MLP, {"elbo": "iwae", "particles": 10}, "iwae"),
    "conv-standard-meanfield": (CONV, {"elbo": "meanfield"}, "vae"),
    "conv-vamp-meanfield": (
        {**CONV, "prior": "vamp", "options": {"prior": {"components": 100, "init_from_data": True}}},
        {"elbo": "meanfield"},
        "vamp",
    ),
    "conv-standard-iwae10": (CONV, {"elbo": "iwae", "particles": 10}, "iwae"),
    # Two stochastic layers, Burda et al.'s architecture: the VAE (Monte Carlo KL: the bottom-up guide rules out the
    # meanfield ELBO) and the IWAE bound with k = 5 particles (Burda et al.: k = 50; a CPU budget).
    "mlp2-standard-trace": (HIER, {"elbo": "trace"}, "vae-2"),
    "mlp2-standard-iwae5": (HIER, {"elbo": "iwae", "particles": 5}, "iwae5-2"),
}
#: Rows run by preset: name -> (preset, TrainConfig fields over it, anchor key). Their protocol is the preset's
#: (``pyro-vae train --preset help``), not PROTOCOL: batch 20 and the 3^i schedule for burda2016, batch 100, warm-up,
#: a 10,000-image validation set and early stopping for tomczak2018.
PRESET_ROWS: dict[str, tuple[str, dict[str, Any], str]] = {
    "burda2016-vae": ("burda2016", {"elbo": "meanfield"}, "burda-vae"),
    "burda2016-iwae5": ("burda2016", {"elbo": "iwae", "particles": 5}, "burda-iwae5"),
    "burda2016-iwae50": ("burda2016", {"elbo": "iwae", "particles": 50}, "burda-iwae50"),
    "tomczak2018-vamp": ("tomczak2018", {"elbo": "meanfield"}, "tomczak-vamp"),
    # patience 50: the preset's value when this row was started (it resumes only with the options it began with).
    "tomczak2018-vamp-dynamic": (
        "tomczak2018",
        {"elbo": "meanfield", "binarization": "dynamic", "patience": 50},
        "tomczak-vamp",
    ),
    # Burda et al.'s two-layer VAE under their whole protocol (batch 20, the 3^i schedule), not only their
    # architecture as the mlp2 rows: the VAE with a Monte Carlo KL (the bottom-up guide rules out meanfield).
    "burda2016-vae-2layer": ("burda2016", {"elbo": "trace"}, "vae-2"),
}
#: VAEConfig fields over a preset row's preset: Burda et al.'s second stochastic layer (100 -> 50 units).
PRESET_MODELS: dict[str, dict[str, Any]] = {
    "burda2016-vae-2layer": {"model": "hierarchical", "options": HIER["options"]},
}
ROWS.update({name: ({}, training, anchor) for name, (_, training, anchor) in PRESET_ROWS.items()})
#: A row counts as reproduced within this many nats of its paper's number; the fit says
#: when a row gets there.
TOLERANCE = 0.5
#: The learning-curve fit leaves out the first epochs, whose fast initial fall is not part of the power law.
FIT_FROM = 3
PROTOCOL = {"z_dim": 50, "likelihood": "bernoulli", "batch_size": 100, "lr": 1e-3, "seed": 0, "threads": 1}


def row_config(name: str, data_dir: str | None, epochs: int) -> TrainConfig:
    if name in PRESET_ROWS:
        preset, training, _ = PRESET_ROWS[name]
        given = {"data_dir": data_dir, "download": False, "epochs": epochs, "threads": 1, **training}
        return TrainConfig.from_preset(preset, model=PRESET_MODELS.get(name), train=given)
    model, training, _ = ROWS[name]
    return TrainConfig(
        model=VAEConfig(z_dim=PROTOCOL["z_dim"], likelihood=PROTOCOL["likelihood"], **model),
        dataset="mnist",
        data_dir=data_dir,
        download=False,
        epochs=epochs,
        batch_size=PROTOCOL["batch_size"],
        lr=PROTOCOL["lr"],
        seed=PROTOCOL["seed"],
        threads=PROTOCOL["threads"],
        **training,
    )


def read_state(out: Path) -> dict[str, Any]:
    path = out / "bench.json"
    return json.loads(path.read_text()) if path.exists() else {"cpu_seconds": 0.0, "sessions": [], "eval": None}


def write_state(out: Path, state: dict[str, Any]) -> None:
    atomic_write_text(out / "bench.json", json.dumps(state, indent=2) + "\n")


def epochs_done(out: Path) -> int:
    metrics = out / "metrics.jsonl"
    if not (out / CHECKPOINT).exists() or not metrics.exists():
        return 0
    return len(metrics.read_text().splitlines())


def train_row(name: str, out: Path, args: argparse.Namespace, data: Any) -> None:
    """Train ``name`` in chunks of ``args.chunk`` epochs until its CPU budget or ``args.epochs`` is reached, scoring
    it (``evaluate_row``) after a chunk that ends ``args.score_every`` or more epochs after the last score."""
    state = read_state(out)
    budget = 60 * args.cpu_minutes
    while True:
        done = epochs_done(out)
        if done >= args.epochs or state["cpu_seconds"] >= budget:
            print(f"{name}: {done} epochs, {state['cpu_seconds'] / 60:.1f} CPU minutes (budget {args.cpu_minutes})")
            return
        target = min(args.epochs, done + args.chunk)
        config = row_config(name, args.data_dir, target)
        t0, w0 = time.process_time(), time.perf_counter()
        train(config, out, resume=done > 0, progress=False, data=data, figures=False)
        cpu, wall = time.process_time() - t0, time.perf_counter() - w0
        state["cpu_seconds"] += cpu
        state["sessions"].append({"epochs": [done, target], "cpu_seconds": cpu, "wall_seconds": wall})
        write_state(out, state)
        if epochs_done(out) == done:  # stopped early (--patience): nothing more to train
            print(f"{name}: stopped early at epoch {done}")
            return
        last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        print(f"{name}: epoch {target}, test ELBO {last['test_elbo']:.2f}, {cpu:.0f} s CPU ({wall:.0f} s wall)")
        scored = (state.get("eval") or {}).get("epoch", 0)
        if args.score_every and epochs_done(out) - scored >= args.score_every:
            evaluate_row(name, out, args)
            state = read_state(out)  # evaluate_row wrote the score into bench.json


def scored_checkpoint(name: str) -> str:
    """Which checkpoint a row's paper reports: ``"best"`` (``best.pt``, the best validation ELBO) for a protocol
    with early stopping (``patience`` > 0: the tomczak2018 rows, whose authors report the early-stopping best),
    else ``"last"`` (Burda et al. report the model after their whole schedule)."""
    return "best" if row_config(name, None, 1).patience > 0 else "last"


def scored_epoch(out: Path, which: str) -> int:
    """The epoch of the checkpoint ``which`` of the run in ``out`` (0 when nothing is trained)."""
    done = epochs_done(out)
    if done == 0 or which == "last":
        return done
    return int(json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["best_epoch"])


def evaluate_row(name: str, out: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """IS log p(x) with K = ``args.eval_k`` over the first ``args.eval_examples`` test images of the checkpoint the
    row's paper reports (``scored_checkpoint``), cached per checkpoint epoch."""
    state = read_state(out)
    which = scored_checkpoint(name)
    epoch = scored_epoch(out, which)
    if epoch == 0:
        return None
    cached = state.get("eval")
    wanted = {"epoch": epoch, "checkpoint": which, "k": args.eval_k, "examples": args.eval_examples}
    # An evaluation from before the key "checkpoint" existed scored the last checkpoint.
    if cached and "gap_se" in cached and all(cached.get(key, "last") == value for key, value in wanted.items()):
        return cached
    run = load_run(out, which=which)
    if run.metrics[-1]["epoch"] != epoch:  # before the IS, which takes minutes
        raise SystemExit(f"{name}: the {which} checkpoint holds epoch {run.metrics[-1]['epoch']}, not {epoch}")
    x = run.data.test_x_eval[: args.eval_examples]
    torch.manual_seed(0)
    t0 = time.process_time()
    elbo, log_p = importance_sample_stats(run.model, run.guide, x, num_samples=args.eval_k, max_rows=args.max_rows)
    n = x.shape[0]
    gap = log_p - elbo
    test_elbo = run.metrics[-1]["test_elbo"]  # of the scored epoch, over all 10,000 test images
    result = {
        **wanted,
        "examples": n,
        "log_px": float(log_p.mean()),
        "log_px_se": float(log_p.std() / math.sqrt(n)),
        "elbo_same_images": float(elbo.mean()),
        "gap": float(gap.mean()),
        "gap_se": float(gap.std() / math.sqrt(n)),
        # The estimate for the whole test set: its ELBO (all images) + the subset's mean gap (module docstring).
        "log_px_all": float(test_elbo + gap.mean()),
        "test_elbo": float(test_elbo),
        "cpu_seconds": time.process_time() - t0,
    }
    # Each image's numbers, for the gap's trend over the scores (``gap_trend``, paired by image): OUT/ROW/scores/,
    # as pyro-vae evaluate keeps them (``pyro_vae.score_history``).
    path = write_score(
        out,
        epoch=epoch,
        checkpoint=which,
        num_samples=args.eval_k,
        elbo=elbo.tolist(),
        log_px=log_p.tolist(),
        test_elbo=test_elbo,
    )
    result["per_image"] = path.name
    # Every score is kept, in order (the one replaced too, when it came from before this history existed): the
    # forecast takes the gap log p(x) - ELBO as constant from the last one on, and its drift is how to check that.
    history = state.setdefault("evaluations", [])
    if cached and cached not in history:
        history.append(cached)
    history.append(result)
    state["eval"] = result
    write_state(out, state)
    print(
        f"{name}: log p(x) {result['log_px']:.2f} +- {result['log_px_se']:.2f} on {n} images (K = {args.eval_k}); "
        f"whole test set {result['log_px_all']:.2f} +- {result['gap_se']:.2f}"
    )
    return result


def trend_of_gap(
    d: Path, ev: dict[str, Any] | None, records: list[dict[str, Any]], fitted: set[int]
) -> tuple[GapTrend, list[int], float] | None:
    """``gap_trend`` over the row's scores (``pyro_vae.score_history``) of the same checkpoint kind, K and images as
    its last score ``ev``, against the power law fitted to its curve (``fitted`` epochs from ``FIT_FROM`` on) at
    their epochs (the measured test ELBO jitters from epoch to epoch: ``pyro_vae.gap_trend``); with the fitted ELBO
    at the last score's epoch. None when fewer than two epochs have a score, or the curve is too short to fit."""
    if not ev:
        return None
    which = ev.get("checkpoint", "last")
    scores = read_scores(d, checkpoint=which, num_samples=ev["k"], num_examples=ev["examples"], metrics=records)
    points = [(m["epoch"], m["test_elbo"]) for m in records if m["epoch"] >= FIT_FROM and m["epoch"] in fitted]
    if len(scores) < 2 or len(points) < MIN_POINTS:
        return None
    fit = fit_power_law(*zip(*points, strict=True))
    epochs = [s.epoch for s in scores]
    try:
        trend = gap_trend(fit.predict(epochs), [s.log_px for s in scores])
    except ValueError:  # a flat fit (b = 0) gives every score the same ELBO: no span to fit a trend over
        return None
    return trend, epochs, float(fit.predict(ev["epoch"]))


def forecast_row(curve: list[tuple[int, float]], target: float, fitted: set[int] | None = None) -> Forecast | None:
    """When the row's test ELBO curve (epochs >= 3, and only those in ``fitted``: the epochs trained at beta = 1)
    reaches the ELBO ``target`` (``pyro_vae.learning_curve``: power-law fit, 90% block-bootstrap interval,
    back-test); None if too short."""
    points = [(t, e) for t, e in curve if t >= FIT_FROM and (fitted is None or t in fitted)]
    if len(points) < MIN_POINTS:
        return None
    epochs, elbo = zip(*points, strict=True)
    return forecast(epochs, elbo, target)


def _epochs_text(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:,.0f}"


def row_result(d: Path, name: str) -> dict[str, Any]:
    """One row of the table from its run directory ``d``: the curve, the evaluation and the forecast."""
    state = read_state(d)
    records = []
    if (d / "metrics.jsonl").exists():
        records = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    curve = [(m["epoch"], m["test_elbo"]) for m in records]
    # A KL warm-up's epochs (beta < 1) train another objective than the ELBO: the fit leaves them out.
    full_beta = {m["epoch"] for m in records if m.get("beta", 1.0) >= 1.0}
    anchor, source = ANCHORS[ROWS[name][2]]
    ev = state.get("eval")
    row = {"row": name, "epochs": len(curve), "cpu_minutes": state["cpu_seconds"] / 60, "curve": curve}
    row.update({"anchor": anchor, "anchor_source": source, "eval": ev, "warmup_epochs": len(curve) - len(full_beta)})
    keys = ("epoch", "checkpoint", "k", "examples", "gap", "gap_se", "log_px_all")
    row["evaluations"] = [{key: e.get(key) for key in keys} for e in state.get("evaluations", [])]
    if curve:
        row["test_elbo"] = curve[-1][1]
    if not ev:
        return row
    row["distance"] = ev["log_px_all"] - anchor
    if ev.get("checkpoint") == "best":  # scored at its early-stopping best, not at its last epoch
        row["test_elbo"] = ev["test_elbo"]
    # The ELBO at which log p(x) = ELBO + gap (the gap of the last score, held constant) is within TOLERANCE.
    target = anchor - TOLERANCE - ev["gap"]
    fc = forecast_row(curve, target, full_beta) if row["distance"] < -TOLERANCE else None
    if fc is not None:
        seconds_per_epoch = state["cpu_seconds"] / len(curve)
        row["forecast"] = {
            "epochs": fc.epochs,
            "epochs_interval": [fc.epochs_low, fc.epochs_high],
            "level": fc.level,
            "asymptote_log_px": fc.asymptote + ev["gap"],
            "asymptote_interval": [fc.asymptote_low + ev["gap"], fc.asymptote_high + ev["gap"]],
            "backtest_error": fc.backtest_error,
            # The fit is trusted when, made on the first half of the curve, it predicted the last epoch within the
            # tolerance the row is judged by, and it has an asymptote at all (its exponent is not at the floor).
            "trusted": fc.identified and fc.backtest_error is not None and abs(fc.backtest_error) <= TOLERANCE,
            "identified": fc.identified,
            "cpu_hours_short": fc.epochs_short * seconds_per_epoch / 3600,
            "fit": {"asymptote": fc.fit.asymptote, "scale": fc.fit.scale, "exponent": fc.fit.exponent},
        }
    found = trend_of_gap(d, ev, records, full_beta)
    if found is not None:
        row["gap_trend"] = gap_trend_result(*found, row, ev, full_beta)
    return row


def gap_trend_result(
    trend: GapTrend, epochs: list[int], elbo_ref: float, row: dict[str, Any], ev: dict[str, Any], fitted: set[int]
) -> dict[str, Any]:
    """The gap's trend over the scores and, when the row has a forecast, the forecast redone with log p(x) moving by
    1 + slope nats per nat of fitted ELBO from the last score's (``elbo_ref``, log p(x)) instead of by 1 (the
    constant gap): the epochs to within ``TOLERANCE`` of the anchor (the curve's 90% interval) and log p(x) at the
    fitted asymptote (at the slope's 90% interval's ends)."""
    out: dict[str, Any] = {
        "epochs": epochs,
        **trend.summary(),
    }
    if "forecast" not in row:
        return out
    ref = {"elbo_ref": elbo_ref, "log_px_ref": ev["log_px_all"]}
    target = trend.elbo_for(row["anchor"] - TOLERANCE, **ref)
    asymptote = row["forecast"]["fit"]["asymptote"]
    limits = [trend.log_px_at(asymptote, **ref, slope=s) for s in (trend.slope_low, trend.slope_high)]
    out["asymptote_log_px"] = trend.log_px_at(asymptote, **ref)
    out["asymptote_interval"] = sorted(limits)
    fc = forecast_row(row["curve"], target, fitted) if math.isfinite(target) else None
    if fc is None:
        out.update(epochs_to=math.inf, epochs_to_interval=[math.inf, math.inf])
    else:
        out.update(epochs_to=fc.epochs, epochs_to_interval=[fc.epochs_low, fc.epochs_high])
    return out


def _fit_text(r: dict[str, Any]) -> str:
    """The table's last four cells of row ``r``."""
    ev, fc = r["eval"], r.get("forecast")
    if fc is None:
        if ev and r["distance"] >= -TOLERANCE:
            return "reached (within 0.5 nats, or past the anchor) | | |"
        if ev and r["warmup_epochs"]:
            return f"in KL warm-up ({r['warmup_epochs']} epochs at beta < 1): no fit | | |"
        return "too short to fit | | |"
    low, high = fc["epochs_interval"]
    a_low, a_high = fc["asymptote_interval"]
    back = "-" if fc["backtest_error"] is None else f"{fc['backtest_error']:+.2f}"
    if not fc["trusted"]:
        back += " (fails: fit not trusted)"
    hours = "-" if math.isinf(fc["cpu_hours_short"]) else f"{fc['cpu_hours_short']:.1f}"
    limit = f"{fc['asymptote_log_px']:.2f} ({a_low:.2f} to {a_high:.2f})"
    if not fc.get("identified", True):
        limit = "not identified (exponent at its floor: the curve climbs like log t)"
    return f"{_epochs_text(fc['epochs'])} ({_epochs_text(low)}-{_epochs_text(high)}) | {limit} | {back} | {hours}"


def report(out: Path, names: list[str]) -> list[dict[str, Any]]:
    """Print the table, write OUT/results.json and OUT/curves.png, from the row directories alone."""
    rows = [row_result(out / name, name) for name in names]
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2) + "\n")
    print(
        "| row | epochs | CPU min (train + eval) | test ELBO | test log p(x) | IS on the subset (K, images) | anchor "
        "| distance | epochs to within 0.5 nats (fit, 90%) | log p(x) at convergence (fit, 90%) | back-test "
        "| CPU h short |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if not r["curve"]:
            print(f"| {r['row']} | not run | | | | | {r['anchor']:.2f} ({r['anchor_source']}) | | | | | |")
            continue
        ev = r["eval"]
        whole = f"{ev['log_px_all']:.2f} ± {ev['gap_se']:.2f}" if ev else "-"
        subset = f"{ev['log_px']:.2f} ± {ev['log_px_se']:.2f} ({ev['k']}, {ev['examples']:,})" if ev else "-"
        cpu = f"{r['cpu_minutes']:.1f} + {ev['cpu_seconds'] / 60:.1f}" if ev else f"{r['cpu_minutes']:.1f}"
        dist = f"{r['distance']:+.2f}" if ev else "-"
        epochs = f"{r['epochs']} (best: {ev['epoch']})" if ev and ev.get("checkpoint") == "best" else r["epochs"]
        print(
            f"| {r['row']} | {epochs} | {cpu} | {r['test_elbo']:.2f} | {whole} | {subset} | "
            f"{r['anchor']:.2f} ({r['anchor_source']}) | {dist} | {_fit_text(r)} |"
        )
    trends = [r for r in rows if "gap_trend" in r]
    if trends:
        print()
        print(
            "| row | scored epochs | IS gap per nat of fitted ELBO (90%) | ELBO span | scatter | back-test (SE) "
            "| log p(x) at convergence, gap's trend (slope's 90%) | epochs to within 0.5 nats (curve's 90%) |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in trends:
            g = r["gap_trend"]
            back = "-" if g["backtest_error"] is None else f"{g['backtest_error']:+.2f} ({g['backtest_se']:.2f})"
            limit = epochs_to = "-"
            if "asymptote_log_px" in g:
                limit = "{:.2f} ({:.2f} to {:.2f})".format(g["asymptote_log_px"], *g["asymptote_interval"])
                low, high = g["epochs_to_interval"]
                epochs_to = f"{_epochs_text(g['epochs_to'])} ({_epochs_text(low)}-{_epochs_text(high)})"
            slope = "{:+.2f} ({:+.2f} to {:+.2f})".format(g["slope"], *g["slope_interval"])
            scored = ", ".join(str(t) for t in g["epochs"])
            scatter = "-" if g["residual_sd"] is None else f"{g['residual_sd']:.2f}"
            cells = f"{scored} | {slope} | {g['elbo_span']:.2f} | {scatter} | {back} | {limit} | {epochs_to}"
            print(f"| {r['row']} | {cells} |")
    plot_curves(rows, out / "curves.png")
    return rows


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """One panel a row, epochs on a log axis: the measured test ELBO, the power-law fit carried on to Burda et al.'s
    3,280 epochs (or to where it reaches the target), and the target ELBO anchor - gap (dashed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [r for r in rows if r["curve"]]
    if not shown:
        return
    cols = min(4, len(shown))
    nrows = math.ceil(len(shown) / cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * nrows))
    for i, r in enumerate(shown):
        ax = fig.add_subplot(nrows, cols, i + 1)
        epochs, elbo = zip(*r["curve"], strict=True)
        ax.plot(epochs, elbo, color="C0", lw=1.2, label="test ELBO")
        fc, ev = r.get("forecast"), r["eval"]
        if fc is not None:
            fit = fc["fit"]
            end = 3280 if math.isinf(fc["epochs"]) else max(epochs[-1], min(fc["epochs"], 1e5))
            t = [FIT_FROM * (end / FIT_FROM) ** (k / 200) for k in range(201)]
            ax.plot(t, [fit["asymptote"] - fit["scale"] * s ** (-fit["exponent"]) for s in t], "C1:", label="fit")
        if ev:
            ax.axhline(r["anchor"] - ev["gap"], color="C3", ls="--", lw=0.8, label="anchor - IS gap")
            ax.axhline(r["anchor"] - TOLERANCE - ev["gap"], color="C3", ls=":", lw=0.8, label="0.5 nats below")
        ax.set_xscale("log")
        low = min(elbo[min(FIT_FROM, len(elbo)) - 1 :]) - 2
        ax.set_ylim(low, (r["anchor"] - ev["gap"] if ev else max(elbo)) + 3)
        ax.set_title(r["row"], fontsize=8)
        ax.set_xlabel("epoch", fontsize=7)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=6)
    fig.suptitle(
        "binarised MNIST: test ELBO per epoch (log axis), power-law fit, and the ELBO that meets the anchor", fontsize=8
    )
    fig.tight_layout()
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/mnist-nll"))
    parser.add_argument("--data-dir", default=None, help="holds MNIST/raw/ (default: the download cache)")
    default_rows = [name for name in ROWS if name not in PRESET_ROWS]  # the preset rows are asked for by name
    parser.add_argument("--rows", nargs="+", default=default_rows, choices=list(ROWS))
    parser.add_argument("--epochs", type=int, default=3280, help="each row's cap on epochs (Burda et al.'s 3,280)")
    parser.add_argument("--cpu-minutes", type=float, default=60.0, help="each row's total CPU budget (all sessions)")
    parser.add_argument("--chunk", type=int, default=5, help="epochs per training session between budget checks")
    parser.add_argument(
        "--score-every",
        type=int,
        default=0,
        metavar="N",
        help="also score a row (IS log p(x)) after each chunk that ends N or more epochs after its last score, for "
        "the gap's trend (default 0: only at the end)",
    )
    parser.add_argument("--eval-k", type=int, default=5000, help="importance samples per test image")
    parser.add_argument("--eval-examples", type=int, default=10000, help="test images for log p(x)")
    parser.add_argument("--max-rows", type=int, default=2**15, help="(particle, image) pairs per decoder pass")
    parser.add_argument("--report", action="store_true", help="only print the table and draw the curves")
    parser.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write each trained row's bundle to DIR/ROW (pyro-vae export: safetensors weights, config, card)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(PROTOCOL["threads"])
    if not args.report:
        data = row_config(args.rows[0], args.data_dir, 1).load_data()
        for name in args.rows:
            train_row(name, args.out / name, args, data)
            evaluate_row(name, args.out / name, args)
    report(args.out, args.rows)
    if args.export:
        export_rows(args.out, args.rows, args.export)


def export_rows(out: Path, names: list[str], bundles: Path) -> None:
    """``pyro-vae export OUT/ROW BUNDLES/ROW --which CHECKPOINT --overwrite`` for every row that has a checkpoint:
    the checkpoint the table scores (``scored_checkpoint``)."""
    from pyro_vae.cli import main as cli

    for name in names:
        if (out / name / CHECKPOINT).exists():
            which = ["--which", scored_checkpoint(name)]
            code = cli(["export", str(out / name), str(bundles / name), *which, "--overwrite"])
            if code != 0:
                raise SystemExit(f"exporting {name} failed (exit {code})")


if __name__ == "__main__":
    main()
