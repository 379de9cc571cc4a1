"""The whole-run and evaluation benchmarks run and check their hand-written references (tiny settings)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

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
