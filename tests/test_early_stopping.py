"""Training controls: the Burda et al. 2016 learning-rate schedule against its stages worked out by hand,
the validation hold-out, early stopping on a validation curve made by hand (so the stop epoch is known), ``best.pt``
(the weights of the best epoch, equal to those of a run stopped there), and exact resumption after a crash."""

from __future__ import annotations

import json

import pytest
import torch

from pyro_vae.config import TrainConfig, VAEConfig
from pyro_vae.data import load_data
from pyro_vae.early_stopping import EarlyStopping
from pyro_vae.elbo_terms import ELBOTerms
from pyro_vae.errors import UserError
from pyro_vae.run_dir import BEST, CHECKPOINT, load_checkpoint, load_run
from pyro_vae.step import make_scheduler
from pyro_vae.training import Trainer, train
from pyro_vae.validation import hold_out, validation_indices
from tests.helpers import power_cut_at_step

# --- the Burda schedule ---------------------------------------------------------------------------------------------

# (0-based epoch, stage i) at the first and last epoch of each stage: stage i lasts 3^i epochs, so the stages start
# at epochs 0, 1, 4, 13, 40, 121, 364, 1093 and the eighth ends after epoch 3280 (1 + 3 + ... + 3^7 = 3280).
BURDA_STAGES = [(0, 0), (1, 1), (3, 1), (4, 2), (12, 2), (13, 3), (39, 3), (40, 4), (120, 4), (121, 5), (363, 5),
                (364, 6), (1092, 6), (1093, 7), (3279, 7), (4000, 7)]  # fmt: skip


def test_burda_schedule_stages_by_hand():
    w = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([w], lr=1e-3)
    scheduler = make_scheduler(optimizer, "burda", epochs=3280)
    rates = []
    for _ in range(4001):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for epoch, stage in BURDA_STAGES:
        assert rates[epoch] == pytest.approx(1e-3 * 10 ** (-stage / 7), rel=1e-12), (epoch, stage)
    assert rates[3279] == pytest.approx(1e-4, rel=1e-12)  # the last stage: a tenth of the first rate
    assert sum(3**i for i in range(8)) == 3280


# --- the validation hold-out ----------------------------------------------------------------------------------------


def test_hold_out_last_and_random():
    assert validation_indices(10, 3, "last", 0).tolist() == [7, 8, 9]
    a, b = validation_indices(100, 10, "random", 5), validation_indices(100, 10, "random", 5)
    assert torch.equal(a, b) and len(set(a.tolist())) == 10  # the same for the same seed, no repeats
    assert not torch.equal(a, validation_indices(100, 10, "random", 6))
    data = load_data("digits")
    rest, held = hold_out(data, 100, "last")
    assert torch.equal(held, data.train_x[-100:]) and torch.equal(rest.train_x, data.train_x[:-100])
    assert torch.equal(rest.test_x, data.test_x) and rest.train_y.shape[0] == data.train_x.shape[0] - 100
    with pytest.raises(UserError, match="hold out between 1 and"):
        hold_out(data, data.train_x.shape[0], "last")


# --- early stopping: the rule by hand -------------------------------------------------------------------------------


def stop_epoch(curve, **options):
    state = EarlyStopping(**options)
    for epoch, value in enumerate(curve, start=1):
        state.update(epoch, value)
        if state.stop:
            return epoch, state
    return None, state


def test_early_stopping_rule_by_hand():
    # patience 3: best -90 at epoch 2; -95, -91, -92 do not beat it: the third of them (epoch 5) stops.
    epoch, state = stop_epoch([-100, -90, -95, -91, -92, -80], patience=3)
    assert (epoch, state.best, state.best_epoch) == (5, -90, 2)
    # min_delta 0.5: -89.7 (a rise of 0.3) is no improvement, -89.4 (0.6) is; then -89.5, -89.0 (0.4): stop at 6.
    epoch, state = stop_epoch([-100, -90, -89.7, -89.4, -89.5, -89.0, -50], patience=2, min_delta=0.5)
    assert (epoch, state.best, state.best_epoch) == (6, -89.4, 4)
    # a warm-up of 3 epochs: falls during it do not count; the first after it (epoch 4) stops with patience 1.
    assert stop_epoch([-100, -101, -102, -103], patience=1, warmup=3)[0] == 4
    assert stop_epoch([-100, -101, -102, -103], patience=0)[0] is None  # 0: never


# --- early stopping in training, on a validation curve made by hand -------------------------------------------------

# The validation ELBO of epoch e is CURVE[e - 1]; with patience 2 the best is epoch 4 and epoch 6 stops.
CURVE = [-60.0, -50.0, -49.0, -45.0, -46.0, -47.0, -10.0, -5.0]


@pytest.fixture
def made_curve(monkeypatch):
    """The validation ELBO of each epoch from CURVE, indexed by the epoch (so a resumed run sees the same)."""

    def evaluate_validation(self):
        return ELBOTerms(elbo=CURVE[len(self.history)], recon=0.0, kl=0.0, kl_kind="analytic")

    monkeypatch.setattr(Trainer, "evaluate_validation", evaluate_validation)


def config(epochs: int = 8, **options) -> TrainConfig:
    base = dict(z_dim=2, hidden=(16,), batch_size=256, threads=1, checkpoint_seconds=0, epochs=epochs)
    return TrainConfig.for_data(load_data("digits"), **{**base, **options})


def run(cfg, out, **kwargs):
    return train(cfg, out, progress=False, figures=False, **kwargs)


def weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_training_stops_at_the_known_epoch_and_best_pt_is_the_best_epoch(tmp_path, made_curve):
    result = run(config(8, validation=200, patience=2), tmp_path / "es")
    assert [r["epoch"] for r in result.metrics] == [1, 2, 3, 4, 5, 6]
    assert [r["bad_epochs"] for r in result.metrics] == [0, 0, 0, 0, 1, 2]
    assert result.metrics[-1]["best_val_elbo"] == -45.0 and result.metrics[-1]["best_epoch"] == 4
    assert load_checkpoint(tmp_path / "es" / CHECKPOINT)["epoch"] == 6
    best = load_run(tmp_path / "es", which="best", with_data=False)
    assert best.epoch == 4
    # The same run stopped by --epochs 4 ends with the weights best.pt holds.
    four = run(config(4, validation=200, patience=2), tmp_path / "four")
    for a, b in ((best.model, four.model), (best.guide, four.guide)):
        for (k, x), y in zip(weights(a).items(), weights(b).values(), strict=True):
            assert torch.equal(x, y), k
    # A resume asks for more epochs but the run has stopped: nothing is trained.
    again = run(config(10, validation=200, patience=2), tmp_path / "es", resume=True)
    assert len(again.metrics) == 6


def test_crash_then_resume_equals_uninterrupted_with_early_stopping(tmp_path, monkeypatch, made_curve):
    full = run(config(8, validation=200, patience=2), tmp_path / "full")
    with power_cut_at_step(monkeypatch, 22):  # 6 steps per epoch (1300 examples, batch 256): epoch 4, step 4
        run(config(8, validation=200, patience=2), tmp_path / "cut")
    assert load_checkpoint(tmp_path / "cut" / CHECKPOINT)["epoch"] == 3
    resumed = run(config(8, validation=200, patience=2), tmp_path / "cut", resume=True)
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()
    assert len(resumed.metrics) == len(full.metrics) == 6  # the counter and best came back: it stops there too
    for name in (CHECKPOINT, BEST):
        a, b = load_checkpoint(tmp_path / "full" / name), load_checkpoint(tmp_path / "cut" / name)
        assert a["epoch"] == b["epoch"]
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k])


def test_crash_then_resume_with_the_real_validation_elbo(tmp_path, monkeypatch):
    # The validation ELBO draws z from the training random stream: a resume restores it, so the records agree.
    cfg = config(4, validation=200, validation_split="random", patience=3)
    run(cfg, tmp_path / "full")
    with power_cut_at_step(monkeypatch, 15):  # 6 steps per epoch: epoch 3, step 3
        run(cfg, tmp_path / "cut")
    run(cfg, tmp_path / "cut", resume=True)
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()
    a, b = load_checkpoint(tmp_path / "full" / BEST), load_checkpoint(tmp_path / "cut" / BEST)
    assert a["epoch"] == b["epoch"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_real_validation_elbo_is_recorded_and_held_out(tmp_path):
    result = run(config(2, validation=300, validation_split="last", lr_schedule="burda"), tmp_path / "v")
    assert result.data.train_x.shape[0] == load_data("digits").train_x.shape[0] - 300  # not trained on
    assert [r["lr"] for r in result.metrics] == pytest.approx([5e-3, 5e-3 * 10 ** (-1 / 7)], rel=1e-12)
    records = [json.loads(line) for line in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    # the validation ELBO is an ELBO of the same model: within a few nats of the test ELBO on these digits
    assert all(abs(r["val_elbo"] - r["test_elbo"]) < 5 for r in records)
    assert (tmp_path / "v" / BEST).is_file()


BAD = [
    ({"patience": 3}, "give --validation N too"),
    ({"validation": -1}, "validation must be an integer >= 0"),
    ({"validation": 10, "min_delta": -1.0}, "min_delta must be a finite number >= 0"),
    ({"validation_split": "first"}, "validation_split must be one of random, last"),
    ({"adam_eps": 0.0}, "adam_eps must be a finite number > 0"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_bad_controls_are_one_line_errors(change, message):
    with pytest.raises(UserError) as err:
        TrainConfig(model=VAEConfig(x_dim=64), **change)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_best_of_a_run_without_validation_is_a_one_line_error(tmp_path):
    run(config(1), tmp_path / "plain")
    with pytest.raises(UserError, match="no best.pt"):
        load_run(tmp_path / "plain", which="best", with_data=False)
