"""The estimators from the command line: `train --elbo NAME` for every registry entry, `evaluate` and
`compare-estimators` on a trained run."""

from __future__ import annotations

import csv
import json

import pyro
import pytest

from pyro_vae.cli import main
from pyro_vae.data import load_data
from pyro_vae.estimators import ESTIMATORS
from pyro_vae.evaluation import evaluate
from pyro_vae.run_dir import load_run
from pyro_vae.training import TrainConfig, train

SMALL = ["--epochs", "2", "--hidden", "32", "--z-dim", "4", "--batch-size", "128", "--lr", "0.01"]


@pytest.fixture(scope="module")
def untrained_test_elbo(tmp_path_factory):
    """The test ELBO of the SMALL model at initialisation (same seed; lr ~ 0 for one epoch)."""
    data = load_data("digits")
    config = TrainConfig.for_data(data, z_dim=4, hidden=(32,), epochs=1, batch_size=128, lr=1e-12)
    result = train(config, tmp_path_factory.mktemp("untrained") / "run", progress=False, data=data, figures=False)
    return result.metrics[-1]["test_elbo"]


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ESTIMATORS.names() if ESTIMATORS[n].latents == "continuous"])
def test_every_estimator_trains_two_epochs_on_digits_from_the_cli(name, untrained_test_elbo, tmp_path, capsys):
    out = tmp_path / name
    # K = 1 would make iwae, renyi and dreg the one-sample ELBO; give the multi-particle ones 5 particles.
    particles = ["--particles", "5"] if ESTIMATORS[name].multi_particle else []
    assert main(["train", "--out", str(out), "--elbo", name, *SMALL, *particles, "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert TrainConfig.from_json((out / "config.json").read_text()).elbo == name
    # Learning happened (measured: about -27.8 against -44.8 nats per example at initialisation).
    assert records[-1]["test_elbo"] > untrained_test_elbo + 5.0


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    config = TrainConfig.for_data(load_data("digits"), z_dim=4, hidden=(32,), epochs=3, batch_size=128, lr=0.01)
    pyro.clear_param_store()
    train(config, out, progress=False, figures=False)
    return out


def test_evaluate_cli_reports_and_writes_what_the_library_computes(trained_run, capsys):
    assert main(["evaluate", str(trained_run), "--num-samples", "300", "--num-examples", "50", "--seed", "4"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((trained_run / "evaluation.json").read_text())
    run = load_run(trained_run)
    pyro.set_rng_seed(4)
    expected = evaluate(run.model, run.guide, run.data.test_x_eval[:50], num_samples=300)
    assert report["epoch"] == 3 and report["num_examples"] == 50 and report["num_samples"] == 300
    for key in ("elbo", "log_likelihood", "gap", "kl_total"):
        assert report[key] == pytest.approx(getattr(expected, key), rel=1e-6), key
        assert f"{getattr(expected, key):.3f}" in printed
    assert report["gap"] > 0 and len(report["kl_per_dimension"]) == 4
    assert f"active units       {expected.active_units:>5d} of 4" in printed


def test_compare_estimators_cli_writes_table_csv_json_and_plot(trained_run, capsys):
    args = ["compare-estimators", str(trained_run), "--estimators", "trace,stl,iwae,dreg", "--draws", "6"]
    assert main([*args, "--examples", "16", "--ll-samples", "200", "--snr-ks", "1", "5"]) == 0
    printed = capsys.readouterr().out
    with open(trained_run / "estimators.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["name"], r["num_particles"]) for r in rows] == [
        ("trace", "1"), ("stl", "1"), ("iwae", "10"), ("dreg", "10"),
        ("iwae", "1"), ("iwae", "5"), ("dreg", "1"), ("dreg", "5"),
    ]  # fmt: skip
    report = json.loads((trained_run / "estimators.json").read_text())
    table = {r["name"]: r for r in report["estimators"]}
    # Every estimator starts from the same seed, so pairs that share their value share their draws:
    assert table["stl"]["value_mean"] == table["trace"]["value_mean"]  # both the one-sample ELBO
    assert table["dreg"]["value_mean"] == table["iwae"]["value_mean"]  # both the IWAE bound
    assert table["dreg"]["grad_var_decoder"] == pytest.approx(table["iwae"]["grad_var_decoder"], rel=1e-6)
    for r in report["estimators"]:
        assert r["bias"] == pytest.approx(r["value_mean"] - report["log_likelihood"])
    assert table["iwae"]["value_mean"] > table["trace"]["value_mean"]  # IWAE_10 is the tighter bound
    assert (trained_run / "snr_vs_k.png").stat().st_size > 10_000
    assert "| dreg | 10 |" in printed and "IS log p(x) per example" in printed


def test_compare_estimators_can_train_first(tmp_path, capsys):
    out = tmp_path / "fresh"
    args = ["compare-estimators", str(out), "--train", "--epochs", "1", "--hidden", "8", "--z-dim", "2"]
    rest = ["--no-progress", "--estimators", "meanfield", "--draws", "3", "--examples", "8", "--ll-samples", "20"]
    assert main([*args, *rest, "--snr-ks", "1", "--snr-estimators", "iwae"]) == 0
    config = TrainConfig.from_json((out / "config.json").read_text())
    assert config.epochs == 1 and config.model.z_dim == 2
    assert len(json.loads((out / "estimators.json").read_text())["estimators"]) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compare-estimators", "{run}", "--estimators", "trace,nope"], "unknown estimator 'nope'"),
        (["compare-estimators", "{run}", "--z-dim", "3"], "model and training options need --train"),
        (["compare-estimators", "{run}", "--draws", "1"], "--draws must be >= 2"),
        (["evaluate", "{missing}"], "does not exist"),
        (["evaluate", "{run}", "--num-samples", "0"], "--ll-samples must be >= 1"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, message, trained_run, tmp_path, capsys):
    argv = [a.format(run=trained_run, missing=tmp_path / "missing") for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-vae: error:") and message in err and "\n" not in err
