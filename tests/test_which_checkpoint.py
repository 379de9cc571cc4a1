"""``--which best`` of evaluate, compare-estimators and plot: they load ``best.pt`` (the best validation ELBO of a run
trained with ``--validation N``) and write beside the last checkpoint's results (``evaluation_best.json``,
``estimators_best.*``, DIR/best/), never over them. Truth: a run trained to the best epoch and stopped there holds
the weights ``best.pt`` holds, so its evaluation (same seed) gives the very same numbers."""

from __future__ import annotations

import json

import pytest

from pyro_vae.cli import main
from pyro_vae.config import TrainConfig
from pyro_vae.data import load_data
from pyro_vae.elbo_terms import ELBOTerms
from pyro_vae.training import Trainer, train
from tests.helpers import one_thread  # noqa: F401 - the fixture, used by pytestmark

pytestmark = pytest.mark.usefixtures("one_thread")

# The validation ELBO of epoch e is CURVE[e - 1]: the best is epoch 2 of 3 (then 4 on a resume).
CURVE = [-60.0, -40.0, -50.0, -55.0]
EVALUATE = ["--ll-samples", "20", "--sweep", "1", "10", "--examples", "16", "--no-collapse", "--no-progress"]


@pytest.fixture
def made_curve(monkeypatch):
    """The validation ELBO of each epoch from CURVE (so the best epoch is known)."""

    def evaluate_validation(self):
        return ELBOTerms(elbo=CURVE[len(self.history)], recon=0.0, kl=0.0, kl_kind="analytic")

    monkeypatch.setattr(Trainer, "evaluate_validation", evaluate_validation)


def fit(out, epochs: int, validation: int = 200, resume: bool = False):
    """Train a small run with the Python API, without figures (the CLI's training is tested elsewhere)."""
    options = dict(z_dim=2, hidden=(16,), batch_size=256, threads=1, checkpoint_seconds=0, validation=validation)
    config = TrainConfig.for_data(load_data("digits"), epochs=epochs, **options)
    train(config, out, progress=False, figures=False, resume=resume)


def read(path):
    return json.loads(path.read_text())


@pytest.mark.slow
def test_which_best_evaluates_compares_and_plots_best_pt_beside_the_last_checkpoint(tmp_path, made_curve, capsys):
    run, stopped = tmp_path / "run", tmp_path / "stopped"
    fit(run, 3)
    fit(stopped, 2)  # ends with the weights of run's best.pt
    assert main(["evaluate", str(run), *EVALUATE]) == 0
    last = read(run / "evaluation.json")
    assert main(["evaluate", str(run), "--which", "best", *EVALUATE]) == 0
    best = read(run / "evaluation_best.json")
    assert read(run / "evaluation.json") == last  # not overwritten
    assert (last["checkpoint"], last["epoch"], best["checkpoint"], best["epoch"]) == ("last", 3, "best", 2)
    assert main(["evaluate", str(stopped), *EVALUATE]) == 0
    truth = read(stopped / "evaluation.json")
    for key in ("elbo", "log_likelihood", "log_likelihood_stderr"):
        assert best[key] == truth[key] and best[key] != last[key], key
    assert "best.pt" in capsys.readouterr().out  # the printed title says which checkpoint

    compare = ["--estimators", "meanfield", "--draws", "2", "--examples", "4", "--ll-samples", "10", "--snr-ks", "1"]
    compare += ["--snr-estimators", "iwae", "--no-progress"]
    assert main(["compare-estimators", str(run), "--which", "best", *compare]) == 0
    report = read(run / "estimators_best.json")
    assert (report["checkpoint"], report["epoch"]) == ("best", 2) and not (run / "estimators.json").exists()
    assert (run / "estimators_best.csv").is_file() and (run / "snr_vs_k_best.png").is_file()

    assert main(["plot", str(run), "--which", "best"]) == 0
    assert {"curves.png", "reconstructions.png"} <= {p.name for p in (run / "best").iterdir()}
    assert not (run / "curves.png").exists()  # nothing written over the last checkpoint's (here: none)

    # A resume changes best.pt (and checkpoint.pt): every result made from them goes.
    fit(run, 4, resume=True)
    made = ["evaluation.json", "evaluation_best.json", "estimators_best.json", "snr_vs_k_best.png", "best"]
    assert not [name for name in made if (run / name).exists()]


def test_which_best_without_best_pt_says_to_train_with_validation_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    fit(run, 1, validation=0)
    for command in (["evaluate", str(run), *EVALUATE], ["plot", str(run)]):
        assert main([*command, "--which", "best"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("pyro-vae: error: no best.pt in") and "--validation N" in err and "\n" not in err, err
    assert not (run / "evaluation_best.json").exists() and not (run / "best").exists()
    # A bundle holds one checkpoint: --which best of a bundle of the last one is refused in one line too.
    pytest.importorskip("safetensors")
    assert main(["export", str(run), str(tmp_path / "bundle")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "bundle"), *EVALUATE, "--which", "best"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds the last checkpoint, not best.pt" in err and "\n" not in err, err
