"""``pyro-vae forecast``: on a run directory whose curve is a known power law it reports that law's epoch to the
target, with the gap taken from ``evaluation.json``; on a real trained run the fit passes through the measured
curve; bad input is one line."""

from __future__ import annotations

import json
import math

import pytest

from pyro_vae.cli import main
from pyro_vae.config import TrainConfig
from pyro_vae.data import load_data
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
