"""The whole-run and evaluation benchmarks run and check their hand-written references (tiny settings)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
#: $PYRO_VAE_DATA_DIR, else ../shared/data next to the repository (this repository's own checks), else None.
_CANDIDATES = (Path(os.environ.get("PYRO_VAE_DATA_DIR") or "."), ROOT.parent / "shared" / "data")
MNIST = next((p for p in _CANDIDATES if (p / "MNIST" / "raw").is_dir()), None)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_end_to_end_benchmark_runs_on_digits_and_its_loop_matches_train(monkeypatch):
    """Two epochs each side: exit 0 and the last line; and its reference is not vacuous: the hand-written loss equals
    TraceMeanField_ELBO's at the same z, and a wrong one (no KL) is refused."""
    out = run("benchmarks/end_to_end.py", "--cases", "digits", "--repeats", "1", "--epochs", "digits=2")
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(
        r"e2e_digits=\d+\.\d+ e2e_mnist_mlp=nan e2e_mnist_conv=nan", out.stdout.strip().splitlines()[-1]
    )
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import end_to_end as e2e

    from pyro_vae.data import load_data

    data = load_data("digits")
    case = e2e.CASES["digits"]
    config = e2e.project_config(case, data, 1, 0)
    data.prepare(e2e.build(config.model)[0].likelihood)
    e2e.check_agreement(config, case, data)

    def recon_only(self, x, z=None):
        x = x.reshape(x.shape[0], -1)
        h = self.encoder(x)
        z = h[:, : self.z_dim] if z is None else z
        return torch.nn.functional.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(1)

    monkeypatch.setattr(e2e.HandWrittenVAE, "per_example", recon_only)
    with pytest.raises(SystemExit, match="loss mismatch"):
        e2e.check_agreement(config, case, data)


@pytest.mark.slow
@pytest.mark.skipif(MNIST is None, reason="MNIST not found in $PYRO_VAE_DATA_DIR or ../shared/data")
def test_eval_speed_benchmark_runs_and_its_sampler_agrees():
    """--quick (20 images, K = 1000): the two log p(x) estimates agree within 4 SE, or it exits non-zero."""
    out = run("benchmarks/eval_speed.py", "--quick", "--data-dir", str(MNIST))
    assert out.returncode == 0, out.stderr + out.stdout
    assert "mean log p(x): log_likelihood" in out.stdout
    assert re.fullmatch(r"eval_ratio=\d+\.\d+", out.stdout.strip().splitlines()[-1])


def test_mnist_nll_report_gives_each_row_the_epoch_its_power_law_reaches_the_anchor(tmp_path, monkeypatch, capsys):
    """A row whose test ELBO follows A - b t^(-c) exactly, with an IS gap of 4 nats measured at its last epoch: the
    table's epochs to within 0.5 nats of Burda et al.'s -86.76 are the law's (b / (A - T))^(1/c) with
    T = anchor - 0.5 - gap, its log p(x) at
    convergence is A + gap, and the CPU hours short are the missing epochs at the row's CPU seconds per epoch."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import json

    import mnist_nll

    a, b, c, gap, epochs = -89.0, 50.0, 0.5, 4.0, 40
    row = tmp_path / "burda2016-vae"
    row.mkdir()
    lines = [json.dumps({"epoch": t, "test_elbo": a - b * t ** (-c)}) for t in range(1, epochs + 1)]
    (row / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    last = a - b * epochs ** (-c)
    ev = {"log_px_all": last + gap, "gap": gap, "gap_se": 0.1, "log_px": last + gap, "log_px_se": 1.0}
    ev.update({"k": 5000, "examples": 500, "cpu_seconds": 60.0})
    (row / "bench.json").write_text(json.dumps({"cpu_seconds": 10.0 * epochs, "sessions": [], "eval": ev}))
    (result,) = mnist_nll.report(tmp_path, ["burda2016-vae"])
    target = -86.76 - 0.5 - gap  # the ELBO at which log p(x) = ELBO + gap is 0.5 nats below the anchor
    t_star = (b / (a - target)) ** (1 / c)  # 482 epochs
    assert result["forecast"]["epochs"] == pytest.approx(t_star, rel=1e-3)
    assert result["forecast"]["asymptote_log_px"] == pytest.approx(a + gap, abs=1e-3)
    assert result["forecast"]["cpu_hours_short"] == pytest.approx((t_star - epochs) * 10.0 / 3600, rel=1e-3)
    assert result["forecast"]["trusted"] and result["forecast"]["identified"]
    assert "| burda2016-vae | 40 |" in capsys.readouterr().out
    # A curve that still climbs like log t has no asymptote: the row says so and its fit is not trusted.
    lines = [json.dumps({"epoch": t, "test_elbo": -120.0 + 6.0 * math.log(t)}) for t in range(1, epochs + 1)]
    (row / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    ev.update(log_px_all=-120.0 + 6.0 * math.log(epochs) + gap)
    (row / "bench.json").write_text(json.dumps({"cpu_seconds": 10.0 * epochs, "sessions": [], "eval": ev}))
    (result,) = mnist_nll.report(tmp_path, ["burda2016-vae"])
    assert not result["forecast"]["identified"] and not result["forecast"]["trusted"]
    assert "not identified (exponent at its floor" in capsys.readouterr().out


def test_mnist_nll_scores_an_early_stopping_row_at_its_best_checkpoint(tmp_path, monkeypatch):
    """Tomczak & Welling report the early-stopping best, Burda et al. the model after the whole schedule: a run
    whose best validation epoch is its first (min_delta so large that no later epoch counts as better) is scored,
    under the tomczak2018 row's name, at best.pt, with that epoch's test ELBO, and under a burda2016 row's name at
    its last checkpoint; a cached score is reused only for the same checkpoint."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import argparse
    import json

    import mnist_nll

    from pyro_vae import TrainConfig, VAEConfig, train

    run_dir = tmp_path / "run"
    config = TrainConfig(
        model=VAEConfig(z_dim=2, hidden=(32,), likelihood="bernoulli"),
        dataset="digits",
        epochs=3,
        validation=100,
        patience=10,
        min_delta=1000.0,
        seed=0,
        threads=1,
    )
    train(config, run_dir, progress=False, figures=False)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["best_epoch"] for r in records] == [1, 1, 1]
    assert records[0]["test_elbo"] != records[-1]["test_elbo"]
    args = argparse.Namespace(eval_k=20, eval_examples=30, max_rows=4096)
    assert mnist_nll.scored_checkpoint("tomczak2018-vamp") == "best"
    best = mnist_nll.evaluate_row("tomczak2018-vamp", run_dir, args)
    assert (best["checkpoint"], best["epoch"], best["test_elbo"]) == ("best", 1, records[0]["test_elbo"])
    assert best["log_px_all"] == pytest.approx(records[0]["test_elbo"] + best["gap"])
    result = mnist_nll.row_result(run_dir, "tomczak2018-vamp")
    assert result["test_elbo"] == records[0]["test_elbo"] and result["epochs"] == 3
    # The same run as a burda2016 row: its last checkpoint, scored afresh (the cached score is best.pt's).
    assert mnist_nll.scored_checkpoint("burda2016-vae") == "last"
    last = mnist_nll.evaluate_row("burda2016-vae", run_dir, args)
    assert (last["checkpoint"], last["epoch"], last["test_elbo"]) == ("last", 3, records[-1]["test_elbo"])
    assert last["log_px"] != best["log_px"]
    assert json.loads((run_dir / "bench.json").read_text())["eval"] == last
    # both scores are kept in order, for the gap's drift; results.json carries them
    assert json.loads((run_dir / "bench.json").read_text())["evaluations"] == [best, last]
    history = mnist_nll.row_result(run_dir, "burda2016-vae")["evaluations"]
    expected = [(1, "best", best["gap"]), (3, "last", last["gap"])]
    assert [(e["epoch"], e["checkpoint"], e["gap"]) for e in history] == expected

    def refuse(*_args, **_kwargs):
        raise AssertionError("a cached score was computed again")

    monkeypatch.setattr(mnist_nll, "importance_sample_stats", refuse)
    assert mnist_nll.evaluate_row("burda2016-vae", run_dir, args) == last
    assert len(json.loads((run_dir / "bench.json").read_text())["evaluations"]) == 2  # a reused score is not new


def test_mnist_nll_scores_every_n_epochs_and_fits_the_gap_trend_from_the_per_image_scores(tmp_path, monkeypatch):
    """``--score-every 4`` on an 8-epoch run (chunks of 2 epochs) scores epochs 4 and 8, each with its per-image
    numbers in scores/; the trend of two scores is the line through them: bench.json's own summaries (mean log p(x)
    of the same images) against the power law fitted to the curve, so the per-image files are the scored images'."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import argparse
    import json

    import mnist_nll

    from pyro_vae import TrainConfig, VAEConfig
    from pyro_vae.learning_curve import fit_power_law

    def digits(name, data_dir, epochs):
        model = VAEConfig(z_dim=2, hidden=(32,), likelihood="bernoulli")
        return TrainConfig(model=model, dataset="digits", epochs=epochs, seed=0, threads=1)

    monkeypatch.setattr(mnist_nll, "row_config", digits)
    args = argparse.Namespace(
        epochs=8, cpu_minutes=1e9, chunk=2, score_every=4, eval_k=20, eval_examples=30, max_rows=4096, data_dir=None
    )
    run_dir = tmp_path / "burda2016-vae"
    mnist_nll.train_row("burda2016-vae", run_dir, args, digits("", None, 1).load_data())
    state = json.loads((run_dir / "bench.json").read_text())
    assert [e["epoch"] for e in state["evaluations"]] == [4, 8] and len(state["sessions"]) == 4
    first, last = state["evaluations"]
    for score in (first, last):
        saved = json.loads((run_dir / "scores" / score["per_image"]).read_text())
        assert len(saved["elbo"]) == len(saved["log_px"]) == 30 and saved["epoch"] == score["epoch"]
        assert saved["test_elbo"] == score["test_elbo"]
        assert np.mean(saved["log_px"]) == pytest.approx(score["log_px"], abs=1e-4)
    trend = mnist_nll.row_result(run_dir, "burda2016-vae")["gap_trend"]
    # against the power law fitted to the curve's epochs 3-8 (the measured test ELBO jitters), as the docs say
    curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    fit = fit_power_law([m["epoch"] for m in curve[2:]], [m["test_elbo"] for m in curve[2:]])
    slope = (last["log_px"] - first["log_px"]) / float(fit.predict(8) - fit.predict(4)) - 1
    assert trend["epochs"] == [4, 8] and trend["slope"] == pytest.approx(slope, rel=1e-4, abs=1e-5)
    assert trend["backtest_error"] is None and trend["residual_sd"] is None  # two scores


def test_mnist_nll_forecast_with_the_gap_trend_moves_log_px_by_one_plus_the_slope(tmp_path, monkeypatch, capsys):
    """The exact power law of the test above, now with two per-image scores whose gap falls by 0.2 nats per nat of
    ELBO: log p(x) climbs 0.8 nats per nat of ELBO from the last score, so the ELBO target is
    E_last + (anchor - 0.5 - log p_last) / 0.8 and the limit log p_last + 0.8 (A - E_last), both closed forms (the
    limit -86.58 against the constant gap's -85.00; at slope -0.5 it would be -88.95, never within 0.5 nats)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import json

    import mnist_nll

    from pyro_vae.score_history import write_score

    a, b, c, gap, epochs, slope = -89.0, 50.0, 0.5, 4.0, 40, -0.2
    row = tmp_path / "burda2016-vae"
    row.mkdir()
    lines = [json.dumps({"epoch": t, "test_elbo": a - b * t ** (-c)}) for t in range(1, epochs + 1)]
    (row / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    last = a - b * epochs ** (-c)
    rng = np.random.default_rng(0)
    spread = rng.normal(0.0, 10.0, size=50)  # the images differ; every image moves alike
    history = []
    for epoch in (20, 40):
        curve_elbo = a - b * epoch ** (-c)  # the run's test ELBO at the epoch: ties the score to this run
        elbo = curve_elbo + spread
        log_px = elbo + gap + slope * (curve_elbo - last)
        path = write_score(
            row, epoch=epoch, checkpoint="last", num_samples=5000, elbo=elbo, log_px=log_px, test_elbo=curve_elbo
        )
        score = {"epoch": epoch, "checkpoint": "last", "k": 5000, "examples": 50}
        history.append({**score, "per_image": path.name})
    ev = {**history[-1], "log_px_all": last + gap, "gap": gap, "gap_se": 0.1, "log_px": last + gap, "log_px_se": 1.0}
    ev.update(test_elbo=last, cpu_seconds=60.0)
    state = {"cpu_seconds": 10.0 * epochs, "sessions": [], "eval": ev, "evaluations": [history[0], ev]}
    (row / "bench.json").write_text(json.dumps(state))
    (result,) = mnist_nll.report(tmp_path, ["burda2016-vae"])
    trend = result["gap_trend"]
    span = b * (20 ** (-c) - 40 ** (-c))  # the law's ELBO from epoch 20 to 40
    assert trend["slope"] == pytest.approx(slope, abs=1e-6) and trend["elbo_span"] == pytest.approx(span, rel=1e-6)
    target = last + (-86.76 - 0.5 - (last + gap)) / (1 + slope)
    assert trend["epochs_to"] == pytest.approx((b / (a - target)) ** (1 / c), rel=1e-3)
    assert trend["asymptote_log_px"] == pytest.approx(last + gap + (1 + slope) * (a - last), abs=1e-3)
    # the constant-gap forecast is unchanged beside it
    assert result["forecast"]["asymptote_log_px"] == pytest.approx(a + gap, abs=1e-3)
    assert "| burda2016-vae | 20, 40 | -0.20 (-0.20 to -0.20) | 3.27 | - | - |" in capsys.readouterr().out


@pytest.mark.skipif(MNIST is None, reason="MNIST not found in $PYRO_VAE_DATA_DIR or ../shared/data")
def test_two_layer_vae_trains_as_its_hand_written_twin_and_a_wrong_twin_is_refused(monkeypatch, capsys):
    """Burda et al.'s two-layer VAE through the library (build, the trace estimator, TrainStep) and written in PyTorch
    alone, same start, batches and noise: 40 steps later their test ELBOs agree to 0.01 nats, where the same code
    with other noise differs by more than 1 nat (so agreement is not the metric's insensitivity). A twin whose
    Gaussian log-densities lack their normalising terms is refused before training."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import reference
    import two_layer_reference as bench

    argv = ["--data-dir", str(MNIST), "--epochs", "2", "--train-examples", "2000"]
    assert bench.main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    found = re.fullmatch(r"max_abs_diff=(\S+) spread=(\S+) time_ratio=\d+\.\d+", last)
    assert found, last
    assert float(found[1]) <= 0.01 and float(found[2]) > 1.0, last

    monkeypatch.setattr(reference, "_log_normal", lambda z, loc, scale: (-0.5 * ((z - loc) / scale) ** 2).sum(-1))
    assert bench.main(argv) == 1
    assert "not the library's" in capsys.readouterr().err
