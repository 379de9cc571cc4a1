"""``pyro-vae evaluate`` with --ais, --gaps and --bdmc, ``--model-module`` for a user's own Pyro model, progress
bars with the time left, and one-line errors for bad input."""

from __future__ import annotations

import io
import json
import math
import re

import pyro
import pytest

from pyro_vae.ais import AISOptions
from pyro_vae.cli import main
from pyro_vae.data import load_data
from pyro_vae.evaluation import evaluate
from pyro_vae.gaps import GapOptions
from pyro_vae.run_dir import load_run
from pyro_vae.training import TrainConfig, train
from tests.helpers import one_thread  # noqa: F401 - the fixture, used by pytestmark
from tests.test_comparison_any_model import trained_vae  # noqa: F401 - the user's VAE fixture

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--num-samples", "200", "--num-examples", "40", "--sweep", "1", "10", "100"]
AIS = ["--ais", "--ais-examples", "6", "--ais-num-steps", "20", "--ais-num-chains", "4"]
GAPS = ["--gaps", "--gap-examples", "6", "--gap-num-steps", "20", "--gap-elbo-samples", "50"]
GAPS += ["--gap-log-likelihood-samples", "50"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    config = TrainConfig.for_data(load_data("digits"), z_dim=3, hidden=(32,), epochs=3, batch_size=128, lr=0.01)
    pyro.clear_param_store()
    train(config, out, progress=False, figures=False)
    return out


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so tqdm draws its bar there."""

    def isatty(self) -> bool:
        return True


def test_evaluate_prints_one_table_with_ais_the_gaps_and_bdmc_and_writes_what_the_library_computes(run_dir, capsys):
    argv = ["evaluate", str(run_dir), *FAST, *AIS, *GAPS, "--bdmc", "4", "--seed", "3", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((run_dir / "evaluation.json").read_text())
    run = load_run(run_dir)
    pyro.set_rng_seed(3)
    expected = evaluate(
        run.model,
        run.guide,
        run.data.test_x_eval[:40],
        num_samples=200,
        sweep=(1, 10, 100),
        ais_options=AISOptions(num_steps=20, num_chains=4),
        ais_examples=6,
        gap_options=GapOptions(num_steps=20, elbo_samples=50, log_likelihood_samples=50),
        gap_examples=6,
        bdmc_examples=4,
    )
    assert report["log_likelihood"] == pytest.approx(expected.log_likelihood, rel=1e-6)
    assert report["log_likelihood_stderr"] == pytest.approx(expected.log_likelihood_stderr, rel=1e-6)
    assert [r["num_samples"] for r in report["sweep"]] == [1, 10, 100, 200]
    for part, key in (("ais", "log_likelihood"), ("gaps", "amortization_gap"), ("bdmc", "upper")):
        assert report[part][key] == pytest.approx(expected.to_dict()[part][key], rel=1e-6), part
    assert report["collapse"]["mutual_information"] + report["collapse"]["marginal_kl"] == pytest.approx(
        report["kl_total"], abs=1e-4
    )
    for row in ("IS log p(x)", "AIS log p(x)", "AIS - IS", "approximation gap", "amortisation gap", "upper bound"):
        assert row in printed, row
    assert f"{expected.log_likelihood:.3f} ± {expected.log_likelihood_stderr:7.3f}" in printed


def test_evaluate_shows_progress_with_the_time_left_on_a_terminal_only(run_dir, monkeypatch, capsys):
    argv = ["evaluate", str(run_dir), *FAST, *AIS]
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert main(argv) == 0
    bars = terminal.getvalue()
    assert "log p(x), K=200" in bars and "AIS, 20 steps" in bars
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", bars)  # tqdm's [elapsed<remaining]
    quiet = Terminal()
    monkeypatch.setattr("sys.stderr", quiet)
    assert main([*argv, "--no-progress"]) == 0
    assert quiet.getvalue() == ""
    monkeypatch.undo()
    assert main(argv) == 0  # stderr captured by pytest: not a terminal, so no bar
    assert "log p(x), K=" not in capsys.readouterr().err


def test_compare_estimators_shows_progress_on_a_terminal(run_dir, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    argv = ["compare-estimators", str(run_dir), "--estimators", "trace", "--draws", "3", "--examples", "8"]
    assert main([*argv, "--ll-samples", "20", "--snr-ks", "1", "--snr-estimators", "iwae"]) == 0
    # One bar per estimator's draws, with tqdm's [elapsed<remaining] slot (a '?' until the first rate is known).
    assert "trace, K=1" in terminal.getvalue() and re.search(r"\[\d\d:\d\d<", terminal.getvalue())


def test_evaluate_runs_on_the_users_own_module(trained_vae, tmp_path, capsys):  # noqa: F811
    _, _, source = trained_vae
    out = tmp_path / "mine"
    argv = ["evaluate", str(out), "--model-module", f"{source}:make_vae", *FAST, *GAPS, "--no-progress"]
    assert main(argv) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert report["num_examples"] == 40 and report["gaps"]["num_examples"] == 6
    assert report["log_likelihood"] > report["elbo"]
    assert f"{source}:make_vae on digits" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ais", "--ais-num-steps", "0"], "AIS num_steps must be an integer >= 1"),
        (["--ais-schedule", "cosine"], "invalid choice 'cosine'"),
        (["--gaps", "--gap-lr", "-1"], "gap option lr must be a finite number > 0"),
        (["--bdmc", "-1"], "--bdmc must be >= 0"),
        (["--sweep", "0"], "--sweep values must be >= 1"),
        (["--max-rows", "0"], "--max-rows must be >= 1"),
        (["--model-module", "nope.py:make"], "nope.py does not exist"),
        (["--model-module", "nocolon"], "needs PATH.py:FACTORY"),
        (["--model-module", "{module}:missing"], "has no function 'missing'; it defines broken, wrong"),
        (["--model-module", "{module}:wrong"], "must return (model, guide) or an object with .model and .guide"),
        (["--model-module", "{module}:broken"], "broken() failed: RuntimeError: no weights here"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, message, run_dir, tmp_path, capsys):
    module = tmp_path / "user.py"
    module.write_text("def wrong():\n    return 3\n\ndef broken():\n    raise RuntimeError('no weights here')\n")
    argv = ["evaluate", str(run_dir), *(a.format(module=module) for a in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-vae: error:") and message in err and "\n" not in err, err


def test_max_rows_changes_the_blocks_not_what_is_estimated(run_dir, capsys):
    """--max-rows 64 (blocks of 1 example, chunks of 64 of the 200 samples) against the default (all 40 examples at
    once): the two IS estimates of log p(x) agree within 4 combined standard errors."""
    results = []
    for extra in ([], ["--max-rows", "64"]):
        assert main(["evaluate", str(run_dir), *FAST, "--no-collapse", *extra]) == 0
        capsys.readouterr()
        results.append(json.loads((run_dir / "evaluation.json").read_text()))
    a, b = results
    assert abs(a["log_likelihood"] - b["log_likelihood"]) < 4 * math.hypot(
        a["log_likelihood_stderr"], b["log_likelihood_stderr"]
    )
    assert a["log_likelihood"] != b["log_likelihood"]  # other draws: the option did reach the sampler


def test_compare_estimators_refuses_training_options_with_a_module(trained_vae, tmp_path, capsys):  # noqa: F811
    _, _, source = trained_vae
    argv = ["compare-estimators", str(tmp_path / "x"), "--model-module", f"{source}:make_vae", "--z-dim", "3"]
    assert main(argv) == 2
    assert "--model-module takes only --dataset" in capsys.readouterr().err


def test_an_interrupted_evaluation_keeps_its_finished_sections_and_the_next_one_reuses_them(
    run_dir, tmp_path, monkeypatch, capsys
):
    import shutil

    import pyro_vae.evaluation as evaluation

    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    real_gaps = evaluation.local_optimisation_gaps

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "local_optimisation_gaps", interrupted)  # Ctrl-C during the gaps
    assert main(["evaluate", str(out), *FAST, *AIS, *GAPS, "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "finished sections (importance, collapse, ais)" in err and "marked partial" in err
    partial = json.loads((out / "evaluation.json").read_text())
    assert partial["partial"] is True and partial["sections_done"] == ["importance", "collapse", "ais"]
    assert partial["gaps"] is None and partial["ais"] is not None

    calls = []
    monkeypatch.setattr(evaluation, "local_optimisation_gaps", lambda *a, **k: calls.append(a) or real_gaps(*a, **k))
    monkeypatch.setattr(evaluation, "importance_sample", interrupted)  # finished: must not run again
    monkeypatch.setattr(evaluation, "ais", interrupted)
    assert main(["evaluate", str(out), *FAST, *AIS, *GAPS, "--no-progress"]) == 0
    assert "reusing the finished sections (importance, collapse, ais)" in capsys.readouterr().err
    final = json.loads((out / "evaluation.json").read_text())
    assert final["partial"] is False and "per_example" not in final and final["gaps"] is not None
    for key in ("log_likelihood", "log_likelihood_stderr", "elbo", "collapse", "ais"):
        assert final[key] == partial[key], key
    # The gaps used the AIS log p(x) of the first run's examples (they are covered by AIS).
    assert final["gaps"]["log_likelihood_source"] == "AIS" and len(calls) == 1
    assert calls[0][4].tolist() == pytest.approx(partial["ais"]["per_example"][:6])

    # With other options the partial record is not reused (and an interruption before any section ends keeps it).
    (out / "evaluation.json").write_text(json.dumps(partial))
    assert main(["evaluate", str(out), *FAST, *AIS, *GAPS, "--seed", "1", "--no-progress"]) == 130
    assert "not reusing the partial evaluation" in capsys.readouterr().err
    assert json.loads((out / "evaluation.json").read_text()) == partial
