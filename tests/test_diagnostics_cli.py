"""``pyro-vae evaluate`` reports the Pareto k-hat of its importance weights and runs SBC with ``--sbc N``; bad SBC
settings are one line and exit 2."""

from __future__ import annotations

import json
import warnings

import pyro
import pytest

from pyro_vae.cli import main
from pyro_vae.comparison import UnreliableReferenceWarning, compare_estimators
from pyro_vae.estimators import make_elbo
from pyro_vae.evaluation import SBCOptions, evaluate
from pyro_vae.importance import importance_sample
from pyro_vae.linear_gaussian import LinearGaussian, set_guide_to_posterior
from pyro_vae.psis import KhatSummary
from pyro_vae.run_dir import load_run
from tests.helpers import one_thread  # noqa: F401 - the fixture, used by pytestmark
from tests.test_evaluate_cli import run_dir  # noqa: F401 - the trained digits run
from tests.test_evaluation import linear_gaussian

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--ll-samples", "200", "--examples", "20", "--sweep", "10", "--no-collapse", "--no-progress"]


def test_evaluate_prints_and_records_k_hat_and_sbc_as_the_library_computes_them(run_dir, capsys):  # noqa: F811
    argv = ["evaluate", str(run_dir), *FAST, "--sbc", "100", "--sbc-draws", "49", "--sbc-bins", "10", "--seed", "5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads((run_dir / "evaluation.json").read_text())
    # The same numbers from the Python API, on the same random stream.
    run = load_run(run_dir)
    x = run.data.test_x_eval[:20]
    pyro.set_rng_seed(5)
    options = SBCOptions(num_simulations=100, num_posterior_draws=49, num_bins=10)
    library = evaluate(run.model, run.guide, x, num_samples=200, sweep=[10], collapse=False, sbc=options)
    assert report["psis"] == pytest.approx(library.psis, nan_ok=True) and report["sbc"] == library.sbc
    assert library.psis["num_samples"] == 200 and library.psis["num_examples"] == 20
    assert "Pareto k-hat: median" in out and "SBC of q(z|x) on 100 simulations" in out
    sbc = report["sbc"]
    assert sbc["num_simulations"] == 100 and sbc["num_bins"] == 10 and len(sbc["p_values"]) == 3
    assert all(sum(h) == 100 for h in sbc["histogram"].values())
    assert sbc["correction"].startswith("Bonferroni over 3")
    assert (run_dir / "sbc_ranks.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sbc", "0"], "--sbc must be >= 1"),
        (["--sbc", "-3"], "--sbc must be >= 1"),
        (["--sbc", "2.5"], "invalid int value: '2.5'"),
        (["--sbc", "10", "--sbc-bins", "7"], "SBC bins must be an integer >= 2 that divides posterior draws + 1"),
        (["--sbc", "10", "--sbc-draws", "0"], "SBC posterior draws must be an integer >= 1"),
        (["--sbc", "10", "--sbc-alpha", "1.5"], "SBC alpha must be a finite number in (0, 1)"),
    ],
)
def test_bad_sbc_settings_are_one_line_exit_2_and_keep_the_evaluation(args, message, run_dir, capsys):  # noqa: F811
    before = (run_dir / "evaluation.json").read_bytes() if (run_dir / "evaluation.json").exists() else None
    assert main(["evaluate", str(run_dir), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-vae: error:") and message in err and "\n" not in err, err
    after = (run_dir / "evaluation.json").read_bytes() if (run_dir / "evaluation.json").exists() else None
    assert before == after


def test_compare_estimators_reports_k_hat_of_its_reference_log_px(run_dir, capsys):  # noqa: F811
    argv = ["compare-estimators", str(run_dir), "--estimators", "trace", "--draws", "3", "--examples", "10"]
    assert main([*argv, "--ll-samples", "100", "--snr-ks", "1", "--snr-estimators", "iwae", "--no-progress"]) == 0
    report = json.loads((run_dir / "estimators.json").read_text())
    run = load_run(run_dir)
    pyro.set_rng_seed(0)  # the command's seed, before its reference
    reference = importance_sample(run.model, run.guide, run.data.test_x_eval[:10], num_samples=100)
    assert report["log_likelihood_psis"] == pytest.approx(KhatSummary.of(reference.khat, 100).to_dict(), nan_ok=True)
    assert "reference log p(x), Pareto k-hat: median" in capsys.readouterr().out


def test_the_comparison_warns_when_k_hat_says_its_reference_is_unreliable(float64):
    model, guide = linear_gaussian(x_dim=5, z_dim=2)
    pyro.set_rng_seed(0)
    x = LinearGaussian.of(model).marginal().sample((10,))
    set_guide_to_posterior(guide, model, scale_factor=0.3)  # exact k = 0.91 (tests/test_psis.py)
    estimators = {"trace": make_elbo("trace")}
    with pytest.warns(UnreliableReferenceWarning, match="reference log p"):
        compare_estimators(model, guide, x, estimators, num_draws=2, log_likelihood_samples=1000)
    set_guide_to_posterior(guide, model, scale_factor=1.5)  # bounded weights
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreliableReferenceWarning)
        compare_estimators(model, guide, x, estimators, num_draws=2, log_likelihood_samples=1000)
