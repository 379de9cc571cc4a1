"""Learning-rate schedules (``--lr-schedule``): each against a sequence of rates worked out by hand, read from the
optimizer after each epoch; exact resumption with the scheduler's state in the checkpoint (format 5), and the
migration of older checkpoints (no scheduler: a constant rate)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from pyro_vae.config import TrainConfig, VAEConfig
from pyro_vae.data import load_data
from pyro_vae.errors import UserError
from pyro_vae.run_dir import CHECKPOINT, FORMAT_VERSION, load_checkpoint, save_checkpoint
from pyro_vae.training import Trainer, train
from tests.helpers import power_cut_at_step

LR = 0.01


def config(epochs: int = 4, **options) -> TrainConfig:
    base = dict(z_dim=2, hidden=(16,), batch_size=256, lr=LR, threads=1, checkpoint_seconds=0, epochs=epochs)
    return TrainConfig.for_data(load_data("digits"), **{**base, **options})


def run(cfg: TrainConfig, out, **kwargs):
    return train(cfg, out, progress=False, figures=False, **kwargs)


def final_lr(out) -> float:
    return load_checkpoint(out / CHECKPOINT)["optimizer"]["param_groups"][0]["lr"]


def test_step_schedule_halves_every_two_epochs(tmp_path):
    result = run(config(5, lr_schedule="step", lr_step_epochs=2, lr_gamma=0.5), tmp_path / "run")
    assert [r["lr"] for r in result.metrics] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025], rel=1e-15)
    assert final_lr(tmp_path / "run") == pytest.approx(0.0025, rel=1e-15)  # after epoch 5: 0.01 * 0.5 ** (5 // 2)


def test_cosine_schedule_anneals_over_the_run(tmp_path):
    result = run(config(4, lr_schedule="cosine"), tmp_path / "run")
    by_hand = [LR * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)]  # 0.01, 0.00854, 0.005, 0.00146
    assert [r["lr"] for r in result.metrics] == pytest.approx(by_hand, rel=1e-12)
    assert final_lr(tmp_path / "run") == pytest.approx(0.0, abs=1e-15)


def test_plateau_schedule_follows_the_test_elbo(tmp_path, monkeypatch):
    # Hand-made test ELBOs; patience 1: the rate is halved after the second epoch in a row without a rise.
    elbos = iter([-100.0, -90.0, -95.0, -96.0, -97.0, -80.0, -85.0])
    real_evaluate = Trainer.evaluate

    def evaluate(self):
        return dataclasses.replace(real_evaluate(self), elbo=next(elbos))

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    result = run(config(7, lr_schedule="plateau", lr_patience=1, lr_gamma=0.5), tmp_path / "run")
    # best -100, -90; then -95 (1 bad epoch), -96 (2 > 1: halved, count reset), -97 (1), -80 (best), -85 (1).
    assert [r["lr"] for r in result.metrics] == [0.01, 0.01, 0.01, 0.01, 0.005, 0.005, 0.005]
    assert final_lr(tmp_path / "run") == 0.005


def test_multistep_schedule_multiplies_at_its_milestones(tmp_path):
    # pythae's MultiStepLR, shrunk: gamma 10^(-1/5) after epochs 2 and 3 of 5, by hand: lr, lr, lr g, lr g^2, lr g^2.
    g = 10 ** (-1 / 5)
    cfg = config(5, lr_schedule="multistep", lr_milestones=[2, 3], lr_gamma=g)
    assert cfg.lr_milestones == (2, 3)  # a list (as JSON gives it) becomes the field's tuple
    result = run(cfg, tmp_path / "run")
    assert [r["lr"] for r in result.metrics] == pytest.approx([LR, LR, LR * g, LR * g * g, LR * g * g], rel=1e-12)
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    # --resume with other milestones is another schedule: refused in one line.
    with pytest.raises(UserError, match="lr_milestones"):
        run(dataclasses.replace(cfg, lr_milestones=(2, 4), epochs=6), tmp_path / "run", resume=True)


SCHEDULES = {
    "step": dict(lr_schedule="step", lr_step_epochs=1, lr_gamma=0.5),
    "multistep": dict(lr_schedule="multistep", lr_milestones=(1, 3), lr_gamma=0.5),
    "cosine": dict(lr_schedule="cosine"),
    "plateau": dict(lr_schedule="plateau", lr_patience=0, lr_gamma=0.5),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_crash_then_resume_equals_uninterrupted(tmp_path, monkeypatch, name):
    full = run(config(4, **SCHEDULES[name]), tmp_path / "full")
    with power_cut_at_step(monkeypatch, 15):  # 6 steps per epoch: epoch 3, step 3
        run(config(4, **SCHEDULES[name]), tmp_path / "cut")
    assert load_checkpoint(tmp_path / "cut" / CHECKPOINT)["scheduler"]["last_epoch"] == 2
    resumed = run(config(4, **SCHEDULES[name]), tmp_path / "cut", resume=True)
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()
    assert len({r["lr"] for r in full.metrics}) > 1 or name == "plateau"
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert final_lr(tmp_path / "cut") == final_lr(tmp_path / "full")


def test_cosine_resume_with_other_epochs_is_refused(tmp_path):
    run(config(2, lr_schedule="cosine"), tmp_path / "run")
    with pytest.raises(UserError, match="the cosine learning-rate schedule anneals over the run's 2 epochs"):
        run(config(3, lr_schedule="cosine"), tmp_path / "run", resume=True)


def test_a_format_4_checkpoint_reads_as_a_constant_rate_and_resumes(tmp_path):
    run(config(1), tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert FORMAT_VERSION == 5 and state["scheduler"] is None and "lr" not in state["metrics"]
    old = {k: v for k, v in state.items() if k != "scheduler"}
    save_checkpoint({**old, "format": 4}, tmp_path / "run" / CHECKPOINT)
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["scheduler"] is None
    resumed = run(config(2), tmp_path / "run", resume=True)
    assert len(resumed.metrics) == 2 and final_lr(tmp_path / "run") == LR


BAD = [
    ({"lr_schedule": "linear"}, "lr_schedule must be one of constant, step, cosine, plateau"),
    ({"lr_step_epochs": 0}, "lr_step_epochs must be an integer >= 1"),
    ({"lr_gamma": 1.0}, "lr_gamma must be a finite number in (0, 1)"),
    ({"lr_gamma": 0.0}, "lr_gamma must be a finite number in (0, 1)"),
    ({"lr_patience": -1}, "lr_patience must be an integer >= 0"),
    ({"lr_schedule": "plateau", "eval_every": 2}, "needs eval_every 1"),
    ({"lr_schedule": "multistep"}, "lr_schedule multistep needs its epochs: give --lr-milestones"),
    ({"lr_schedule": "multistep", "lr_milestones": (3, 2)}, "lr_milestones must rise, each epoch once: got [3, 2]"),
    ({"lr_schedule": "multistep", "lr_milestones": (0,)}, "each of lr_milestones must be an integer >= 1"),
    ({"lr_milestones": (5,)}, "lr_milestones are the multistep schedule's; lr_schedule is constant"),
    ({"lr_schedule": "multistep", "lr_milestones": 5}, "lr_milestones must be a list of epochs, got 5"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_bad_lr_schedules_are_one_line_errors(change, message):
    with pytest.raises(UserError) as err:
        TrainConfig(model=VAEConfig(x_dim=64), **change)
    assert message in str(err.value) and "\n" not in str(err.value)
