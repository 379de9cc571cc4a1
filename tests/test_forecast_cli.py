"""``pyro-vae forecast``: on a run directory whose curve is a known power law it reports that law's epoch to the
target, with the gap taken from ``evaluation.json``; on a real trained run the fit passes through the measured
curve; bad input is one line."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from pyro_vae.cli import main
from pyro_vae.config import TrainConfig
from pyro_vae.data import load_data
from pyro_vae.learning_curve import fit_power_law
from pyro_vae.score_history import write_score
from pyro_vae.training import train

A, B, C = -90.0, 40.0, 0.5


def write_run(path, epochs=60, evaluated_epoch=60, gap=4.0, val=True):
    """A run directory's metrics.jsonl following ELBO(t) = A - b t^(-c) exactly, and its evaluation.json."""
    path.mkdir()
    lines = []
    for t in range(1, epochs + 1):
        record = {"epoch": t, "test_elbo": A - B * t ** (-C)}
        if val:
            record["val_elbo"] = A - 1 - B * t ** (-C)
        lines.append(json.dumps(record))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    elbo = A - B * evaluated_epoch ** (-C)
    (path / "evaluation.json").write_text(
        json.dumps({"epoch": evaluated_epoch, "elbo": elbo, "log_likelihood": elbo + gap})
    )
    return path


def forecast_json(capsys, *args):
    assert main(["forecast", *map(str, args), "--json", "--resamples", "50"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_epoch_to_a_target_is_the_generating_laws(tmp_path, capsys):
    """Target ELBO A - 0.5: t* = (b / 0.5)^(1/c) = 6,400 epochs; the fit's asymptote is A; the back-test is exact."""
    run = write_run(tmp_path / "run")
    out = forecast_json(capsys, run, "--target", A - 0.5)
    assert out["epochs"] == pytest.approx((B / 0.5) ** (1 / C), rel=1e-3)
    assert out["epochs_more"] == pytest.approx(out["epochs"] - 60, rel=1e-6)
    assert out["fit"]["asymptote"] == pytest.approx(A, abs=1e-4)
    assert out["backtest_error"] == pytest.approx(0.0, abs=1e-4)
    # epochs of a KL warm-up (beta < 1) are not on the ELBO's curve: made-up values there change nothing
    lines = (run / "metrics.jsonl").read_text().splitlines()
    warm = [json.dumps({"epoch": t, "beta": t / 11, "test_elbo": -500.0 + t}) for t in range(1, 11)]
    (run / "metrics.jsonl").write_text("\n".join(warm + lines[10:]) + "\n")
    again = forecast_json(capsys, run, "--target", A - 0.5)
    assert again["epochs_fitted"] == [11, 60]
    assert again["epochs"] == pytest.approx((B / 0.5) ** (1 / C), rel=1e-3)
    # the validation curve is its own curve: 1 nat lower, so the same target is never reached
    out = forecast_json(capsys, run, "--target", A - 0.5, "--metric", "val_elbo")
    assert out["epochs"] == float("inf")


def test_a_curve_without_an_asymptote_says_so_instead_of_printing_one(tmp_path, capsys):
    """A curve climbing like log t (epochs 101-131): the text says the limit is not identified and prints no number
    for it; the JSON carries asymptote_identified false (and true for the power law)."""
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps({"epoch": t, "test_elbo": -100.0 + 2.0 * math.log(t)}) for t in range(101, 132)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["forecast", str(run), "--target", "-90.5", "--resamples", "20"]) == 0
    out = capsys.readouterr().out
    assert "ELBO at convergence: not identified: the exponent is at its floor" in out
    assert forecast_json(capsys, run, "--target", -90.5)["asymptote_identified"] is False
    assert forecast_json(capsys, write_run(tmp_path / "law"), "--target", A - 0.5)["asymptote_identified"] is True


def test_a_log_px_target_uses_the_gap_evaluate_measured(tmp_path, capsys):
    """log p(x) target A + 3.5 with gap 4 from evaluation.json is the ELBO A - 0.5; --gap overrides the file."""
    run = write_run(tmp_path / "run", gap=4.0)
    out = forecast_json(capsys, run, "--log-px", A + 3.5)
    assert out["target_elbo"] == pytest.approx(A - 0.5) and out["gap"] == pytest.approx(4.0)
    assert out["epochs"] == pytest.approx((B / 0.5) ** (1 / C), rel=1e-3)
    out = forecast_json(capsys, run, "--log-px", A + 3.5, "--gap", 3.0)
    assert out["target_elbo"] == pytest.approx(A + 0.5) and out["epochs"] == float("inf")
    # --within 1: within 1 nat of log p(x) A + 4.5 is the ELBO A - 0.5 again
    out = forecast_json(capsys, run, "--log-px", A + 4.5, "--within", 1.0)
    assert out["target_elbo"] == pytest.approx(A - 0.5)
    assert out["epochs"] == pytest.approx((B / 0.5) ** (1 / C), rel=1e-3)


def test_a_real_runs_fit_passes_through_its_measured_curve(tmp_path, capsys):
    """20 epochs on the digits: the epoch at which the fit reaches the ELBO measured at epoch 12 is within two
    epochs of 12 (the fitted curve goes through the measured one), and the text names every part."""
    config = TrainConfig.for_data(load_data("digits"), z_dim=2, hidden=(32,), batch_size=64, threads=1, epochs=20)
    run = tmp_path / "run"
    train(config, run, progress=False, figures=False)
    curve = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    at_12 = curve[11]["test_elbo"]
    out = forecast_json(capsys, run, "--target", at_12)
    assert abs(out["epochs"] - 12) <= 2
    assert main(["forecast", str(run), "--target", str(at_12 + 0.5), "--resamples", "50"]) == 0
    text = capsys.readouterr().out
    for part in ("test_elbo: epochs 3-20", "target: ELBO", "at convergence", "back-test: fitted on epochs up to 10"):
        assert part in text


@pytest.mark.parametrize(
    "setup,args,message",
    [
        ({}, ["--log-px", "-85"], "is from epoch 60 but the curve ends at epoch 61"),
        ({"evaluation": False}, ["--log-px", "-85"], "run pyro-vae evaluate"),
        ({"val": False}, ["--target", "-85", "--metric", "val_elbo"], "only a run trained with --validation"),
        ({}, ["--target", "-85", "--from-epoch", "58"], "has 4 epochs of test_elbo at beta = 1 from epoch 58 on"),
        ({}, ["--target", "inf"], "--target must be a finite number"),
        ({}, ["--target", "-85", "--gap", "3"], "--gap goes with --log-px"),
        ({}, ["--target", "-85", "--level", "1.5"], "--level must be a finite number in (0, 1)"),
        ({}, ["--target", "-85", "--within", "-1"], "--within must be a finite number >= 0"),
        ({"missing": True}, ["--target", "-85"], "does not exist"),
    ],
    ids=["stale-evaluation", "no-evaluation", "no-val", "too-short", "inf", "gap-alone", "level", "within", "no-run"],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, setup, args, message):
    run = tmp_path / "run"
    if not setup.get("missing"):
        write_run(run, epochs=61, evaluated_epoch=60, val=setup.get("val", True))
        if setup.get("evaluation") is False:
            (run / "evaluation.json").unlink()
        before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["forecast", str(run), *args]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    if not setup.get("missing"):
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def burda_rates(lr, until):
    """Burda et al. 2016, Sec. 5, as the paper states it: 3^i epochs at lr 10^(-i/7) for i = 0, ..., 7, the last rate
    kept after (3,280 epochs)."""
    rates = [lr * 10 ** (-i / 7) for i in range(8) for _ in range(3**i)]
    return (rates + [rates[-1]] * until)[:until]


@pytest.mark.parametrize(
    "schedule,options,expected",
    [
        ("constant", {}, [0.1] * 6),
        ("step", {"step_epochs": 2, "gamma": 0.5}, [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]),
        ("multistep", {"milestones": (2, 3), "gamma": 0.5}, [0.1, 0.1, 0.05, 0.025, 0.025, 0.025]),
        # Loshchilov & Hutter: lr (1 + cos(pi t / T)) / 2 at t = 0, 1, ... over T = epochs = 4 (past T it rises again)
        ("cosine", {}, [0.1 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(6)]),
    ],
    ids=["constant", "step", "multistep", "cosine"],
)
def test_the_scheduled_rates_are_the_schedules_as_written(schedule, options, expected):
    from pyro_vae.step import scheduled_rates

    assert scheduled_rates(schedule, 0.1, 6, epochs=4, **options) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_the_burda_rates_are_the_papers_stages_and_plateau_is_unknown():
    from pyro_vae.step import scheduled_rates

    assert scheduled_rates("burda", 1e-3, 3300, epochs=3280) == pytest.approx(burda_rates(1e-3, 3300), rel=1e-12)
    assert scheduled_rates("plateau", 1e-3, 10, epochs=10) is None


def write_config(run, schedule, **fields):
    config = TrainConfig(epochs=60, lr_schedule=schedule, **fields)
    (run / "config.json").write_text(config.to_json())


def test_the_forecast_names_the_rate_changes_in_its_back_test_and_ahead(tmp_path, capsys):
    """A 60-epoch run under Burda et al.'s schedule: its rate changes after epochs 1, 4, 13, 40, 121, 364, 1,093 (the
    ends of the 3^i stages); the back-test spans epochs 30-60, so 40 falls in it; the forecast reaches A - 0.5 at
    epoch 6,400, so 121, 364 and 1,093 lie ahead. A constant rate says nothing; a plateau schedule says it cannot
    know; a damaged config is one line."""
    run = write_run(tmp_path / "run")
    write_config(run, "burda")
    out = forecast_json(capsys, run, "--target", A - 0.5)
    assert out["lr_changes"]["schedule"] == "burda"
    assert out["lr_changes"]["in_backtest"] == [40]
    assert out["lr_changes"]["ahead"] == [121, 364, 1093]
    assert out["epochs"] == pytest.approx((B / 0.5) ** (1 / C), rel=1e-3)  # the fit itself is unchanged
    assert main(["forecast", str(run), "--target", str(A - 0.5), "--resamples", "20"]) == 0
    text = capsys.readouterr().out
    assert "changes after epoch 40, between the back-test's half (30) and the curve's end (60)" in text
    assert "changes after epoch 121, 364, 1,093 (up to epoch" in text and "ahead of the curve" in text
    # pythae's milestones: 200, 350, 500, 750 and 1,000 are all ahead of epoch 60
    write_config(run, "multistep", lr_milestones=(200, 350, 500, 750, 1000))
    assert forecast_json(capsys, run, "--target", A - 0.5)["lr_changes"]["ahead"] == [200, 350, 500, 750, 1000]
    write_config(run, "constant")
    assert forecast_json(capsys, run, "--target", A - 0.5)["lr_changes"] is None
    assert main(["forecast", str(run), "--target", str(A - 0.5), "--resamples", "20"]) == 0
    assert "learning rate" not in capsys.readouterr().out
    write_config(run, "plateau")
    assert main(["forecast", str(run), "--target", str(A - 0.5), "--resamples", "20"]) == 0
    assert "it drops when the test ELBO stalls, which no fit of the curve foresees" in capsys.readouterr().out
    # a config.json from before lr_milestones and lr_step_epochs existed: their defaults, as a resume takes them
    (run / "config.json").write_text(json.dumps({"lr_schedule": "burda", "lr": 1e-3, "epochs": 60}))
    assert forecast_json(capsys, run, "--target", A - 0.5)["lr_changes"]["ahead"] == [121, 364, 1093]
    (run / "config.json").write_text("[1, 2]")
    assert main(["forecast", str(run), "--target", str(A - 0.5)]) == 2
    assert "is not a run's config" in capsys.readouterr().err
    (run / "config.json").write_text("{not json")
    assert main(["forecast", str(run), "--target", str(A - 0.5)]) != 0
    err = capsys.readouterr().err.strip()
    assert "is not a run's config" in err and "\n" not in err and "Traceback" not in err


def test_rate_changes_ahead_are_named_even_when_the_target_is_reached(tmp_path, capsys):
    """9 epochs, milestones 6 and 50: the target (far below the curve) is reached at once, yet the asymptote is a
    forecast too, so the change after epoch 50 (within 10 x 9 epochs) is named; the one after epoch 6 is not put on a
    back-test, since 9 epochs leave too short a first half to make one."""
    run = write_run(tmp_path / "run", epochs=9, evaluated_epoch=9)
    write_config(run, "multistep", lr_milestones=(6, 50))
    out = forecast_json(capsys, run, "--target", A - 100)
    assert out["epochs"] < 9 and out["backtest_error"] is None
    assert out["lr_changes"]["in_backtest"] == [] and out["lr_changes"]["ahead"] == [50]
    assert out["lr_changes"]["horizon"] == 90


def write_scores(run, slope, gap=4.0, epochs=(30, 60), images=40, num_samples=100):
    """Two IS scores of the exact law's run (``write_run``) whose per-image gaps fall by ``-slope`` nats per nat of
    ELBO and end at ``gap`` on the last epoch, with evaluation.json the last one's (K and images included)."""
    rng = np.random.default_rng(0)
    spread = rng.normal(0.0, 8.0, size=images)  # the images differ; all move alike
    last = A - B * epochs[-1] ** (-C)
    for i, t in enumerate(epochs):
        curve = A - B * t ** (-C)
        log_px = curve + spread + gap + slope * (curve - last)
        elbo = log_px - gap - slope * (curve - last) + (0.7 if i % 2 else -0.7)  # the guide's jitter: not a trend
        write_score(run, epoch=t, checkpoint="last", num_samples=num_samples, elbo=elbo, log_px=log_px, test_elbo=curve)
    record = {"epoch": epochs[-1], "elbo": last + float(spread.mean()), "num_samples": num_samples}
    record.update(log_likelihood=record["elbo"] + gap, num_examples=images)
    (run / "evaluation.json").write_text(json.dumps(record))


def test_the_gap_trend_moves_log_px_by_one_plus_its_slope(tmp_path, capsys):
    """Scores at epochs 30 and 60 whose gap falls 0.4 nats per nat of ELBO: log p(x) gains 0.6 nats per nat of ELBO
    from the last epoch's (E_60 + 4), so the ELBO target of log p(x) L is E_60 + (L - E_60 - 4) / 0.6, reached at the
    law's (b / (A - T))^(1/c), and log p(x) at convergence is E_60 + 4 + 0.6 (A - E_60): closed forms."""
    run = write_run(tmp_path / "run")
    write_scores(run, slope=-0.4)
    last = A - B * 60 ** (-C)
    goal = last + 4.0 + 2.0  # 2 nats of log p(x) above the last epoch's
    out = forecast_json(capsys, run, "--log-px", goal, "--gap-trend")
    target = last + 2.0 / 0.6
    assert out["target_elbo"] == pytest.approx(target, abs=1e-5)  # through the fitted law (fit error ~1e-7)
    assert out["epochs"] == pytest.approx((B / (A - target)) ** (1 / C), rel=1e-3)
    trend = out["gap_trend"]
    assert trend["epochs"] == [30, 60] and trend["slope"] == pytest.approx(-0.4, abs=1e-6)
    assert trend["slope_interval"] == pytest.approx([-0.4, -0.4], abs=1e-6)  # every image moves alike
    assert trend["asymptote_log_px"] == pytest.approx(last + 4.0 + 0.6 * (A - last), abs=1e-3)
    # the held gap's forecast of the same goal needs only 2 nats of ELBO: earlier
    held = forecast_json(capsys, run, "--log-px", goal)
    assert held["target_elbo"] == pytest.approx(last + 2.0, abs=1e-9) and held["epochs"] < out["epochs"]
    assert main(["forecast", str(run), "--log-px", str(goal), "--gap-trend", "--resamples", "20"]) == 0
    text = capsys.readouterr().out
    for part in ("gap trend: log p(x) - ELBO moves by -0.400", "the gap following its trend", "gap held at 4.00"):
        assert part in text


def test_evaluate_keeps_a_score_per_epoch_that_a_resume_keeps_and_overwrite_removes(tmp_path, capsys):
    """The whole path on the digits: evaluate at epoch 4, train on to 8 (evaluation.json goes, the score stays),
    evaluate again, and the trend of the two scores is the line through evaluate's own two summaries (mean log p(x)
    of the same images) against the fitted curve; a run trained afresh over it (--overwrite) starts with no
    scores."""
    config = TrainConfig.for_data(load_data("digits"), z_dim=2, hidden=(32,), batch_size=64, threads=1, epochs=4)
    run = tmp_path / "run"
    train(config, run, progress=False, figures=False)
    evaluate_args = ["evaluate", str(run), "--num-samples", "50", "--num-examples", "60", "--no-progress"]
    assert main(evaluate_args) == 0
    first = json.loads((run / "evaluation.json").read_text())
    assert (run / "scores" / "epoch-00004-last-k50-n60.json").is_file()
    train(dataclasses.replace(config, epochs=8), run, resume=True, progress=False, figures=False)
    assert not (run / "evaluation.json").exists() and (run / "scores" / "epoch-00004-last-k50-n60.json").is_file()
    assert main(evaluate_args) == 0
    second = json.loads((run / "evaluation.json").read_text())
    capsys.readouterr()
    out = forecast_json(capsys, run, "--log-px", second["log_likelihood"] + 1.0, "--gap-trend", "--from-epoch", "1")
    # against the power law fitted to the curve (epochs 1-8), as the docs say: the measured test ELBO jitters
    curve = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    fit = fit_power_law([m["epoch"] for m in curve], [m["test_elbo"] for m in curve])
    slope = (second["log_likelihood"] - first["log_likelihood"]) / float(fit.predict(8) - fit.predict(4)) - 1
    assert out["gap_trend"]["epochs"] == [4, 8]
    # evaluate's means are float32 sums of ~-100 nats (rounding ~1e-5), the trend's float64 sums of the same values
    assert out["gap_trend"]["slope"] == pytest.approx(slope, abs=1e-4)
    train(config, run, overwrite=True, progress=False, figures=False)
    assert not (run / "scores").exists()


@pytest.mark.parametrize(
    "setup,args,message",
    [
        ("scores", ["--target", "-85", "--gap-trend"], "--gap-trend goes with --log-px"),
        ("scores", ["--log-px", "-85", "--gap", "3", "--gap-trend"], "--gap-trend goes with --log-px"),
        ("one", ["--log-px", "-85", "--gap-trend"], "at 2 or more epochs, the last one included"),
        ("damaged", ["--log-px", "-85", "--gap-trend"], "is not a score written by pyro-vae evaluate"),
    ],
    ids=["no-log-px", "with-gap", "one-score", "damaged"],
)
def test_bad_gap_trend_input_is_one_line(tmp_path, capsys, setup, args, message):
    run = write_run(tmp_path / "run")
    write_scores(run, slope=-0.4, epochs=(60,) if setup == "one" else (30, 60))
    if setup == "damaged":
        (run / "scores" / "epoch-00030-last-k100-n40.json").write_text("{not json")
    assert main(["forecast", str(run), *args]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
