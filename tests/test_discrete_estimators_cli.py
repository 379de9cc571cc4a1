"""The estimators of discrete latents from the command line: ``compare-estimators`` on a user's model with 8
Bernoulli latents (the exact reference by enumeration of its 256 states), ``train --elbo NAME`` with their options,
and one-line errors where an estimator does not fit the model."""

from __future__ import annotations

import json
import textwrap

import pytest

from pyro_vae.cli import main
from pyro_vae.estimators import ESTIMATORS

PAIR = textwrap.dedent(
    """
    import pyro
    import pyro.distributions as dist
    import torch
    from torch import nn


    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.prior_logits = nn.Parameter(torch.zeros(8))
            self.decoder = nn.Linear(8, 64)
            self.encoder = nn.Linear(64, 8)

        def model(self, x):
            pyro.module("decoder", self.decoder)
            prior = pyro.param("prior_logits", self.prior_logits)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Bernoulli(logits=prior).expand([x.shape[0], 8]).to_event(1))
                pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

        def guide(self, x):
            pyro.module("encoder", self.encoder)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Bernoulli(logits=self.encoder(x)).to_event(1))


    def make_pair():
        return Pair()
    """
)


@pytest.mark.slow
def test_compare_estimators_on_discrete_latents_reports_the_exact_bias(tmp_path, capsys):
    source = tmp_path / "pair.py"
    source.write_text(PAIR)
    out = tmp_path / "cmp"
    args = ["compare-estimators", str(out), "--model-module", f"{source}:make_pair", "--no-progress"]
    assert main([*args, "--draws", "20", "--examples", "4", "--snr-ks", "2", "--particles", "2"]) == 0
    report = json.loads((out / "estimators.json").read_text())
    rows = {r["name"]: r for r in report["estimators"]}
    # The default estimators are those that work with discrete latents; log p(x) is exact (256 states).
    assert list(rows) == [n for n in ESTIMATORS if ESTIMATORS[n].latents in ("discrete", "any")]
    assert report["log_likelihood_exact_states"] == 256 and report["log_likelihood_stderr"] == 0
    enum = rows["enum"]
    assert enum["value_std"] < 1e-5 and abs(enum["exact_bias"]) < 1e-4  # the exact ELBO, every draw
    assert enum["grad_bias_encoder"] < 1e-4 and enum["grad_bias_decoder"] < 1e-4
    for name in ("reinforce", "disarm", "vimco"):  # unbiased: within 4 SE of the exact ELBO / IWAE_2 bound
        assert abs(rows[name]["exact_bias"]) < 4 * rows[name]["exact_bias_stderr"], name
    assert rows["vimco"]["exact_target"] > rows["enum"]["exact_target"]  # IWAE_2 above the ELBO
    assert rows["relaxed"]["exact_target"] == rows["enum"]["exact_target"]  # compared with the discrete ELBO
    sweep = report["snr_vs_k"]
    assert [(r["name"], r["num_particles"]) for r in sweep] == [("rws", 2), ("vimco", 2)]
    printed = capsys.readouterr().out
    assert "exact log p(x) per example" in printed and "exact bias ± SE" in printed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--elbo", "disarm"], "estimator 'disarm' is for discrete latents; guide 'normal' samples continuous z"),
        (["--elbo", "relaxed", "--elbo-temperature", "0"], "temperature must be a finite number > 0"),
        (["--elbo", "reinforce", "--elbo-baseline", "magic"], "invalid choice 'magic' (choose from learned, average"),
        (["--elbo", "vimco"], "needs num_particles >= 2"),
    ],
    ids=["disarm-on-gaussian", "temperature-0", "bad-baseline", "vimco-one-particle"],
)
def test_train_says_in_one_line_what_an_estimator_needs(args, message, tmp_path, capsys):
    small = ["--epochs", "1", "--hidden", "8", "--z-dim", "2", "--no-progress"]
    assert main(["train", "--out", str(tmp_path / "run"), *args, *small]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-vae: error:") and message in err and "\n" not in err, err
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


def test_train_with_score_function_estimators_on_gaussian_latents(tmp_path):
    """reinforce (with its options) and vimco work with any latents: one epoch on digits from the CLI."""
    small = ["--epochs", "1", "--hidden", "8", "--z-dim", "2", "--no-progress", "--batch-size", "256"]
    run = tmp_path / "reinforce"
    assert main(["train", "--out", str(run), "--elbo", "reinforce", "--elbo-baseline", "average", *small]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["elbo"] == "reinforce" and config["elbo_options"]["baseline"] == "average"
    assert main(["train", "--out", str(tmp_path / "vimco"), "--elbo", "vimco", "--particles", "3", *small]) == 0


@pytest.mark.slow
def test_the_disarm_mnist_benchmark_runs_in_a_tiny_setting(tmp_path):
    """benchmarks/disarm_mnist.py, 4 steps of two estimators on the linear model: exit 0, its table, its curves and
    results; the ELBO at step 0 is the same for both (same seed, same evaluator). Skipped without MNIST on disk."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    data = Path(os.environ.get("PYRO_VAE_DATA_DIR") or root.parent / "shared" / "data")
    if not (data / "MNIST" / "raw").is_dir():
        pytest.skip("MNIST is not on disk")
    args = ["--data-dir", str(data), "--out", str(tmp_path), "--steps", "4", "--eval-every", "4"]
    args += ["--estimators", "disarm,vimco", "--architectures", "linear"]
    out = subprocess.run(
        [sys.executable, "benchmarks/disarm_mnist.py", *args], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "| linear | disarm |" in out.stdout and "0.00% of the paper's 10^6" in out.stdout
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [len(r["curve"]) for r in rows] == [2, 2] and rows[0]["curve"][0] == rows[1]["curve"][0]
    assert (tmp_path / "curves.png").stat().st_size > 10_000
