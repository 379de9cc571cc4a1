"""Checkpoints: exact resumption, crash consistency of checkpoint.pt and metrics.jsonl, atomic saves,
safe loading, and ``load_run``."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import pyro_vae.atomic as atomic_module
import pyro_vae.run_dir as run_dir_module
from pyro_vae.data import load_data
from pyro_vae.elbo_terms import elbo_terms
from pyro_vae.errors import UserError
from pyro_vae.run_dir import CHECKPOINT, load_checkpoint, load_run, rng_state, set_rng_state
from pyro_vae.step import TrainStep
from pyro_vae.training import TrainConfig, train
from tests.helpers import power_cut_at_step

CONFIGS = {
    # the default estimator with dynamic binarisation
    "meanfield": dict(z_dim=2, hidden=(16,), batch_size=256),
    # Monte Carlo KL, two vectorised particles, KL warm-up and clipping: more random draws per step
    "trace-warmup": dict(z_dim=3, hidden=(16,), batch_size=300, elbo="trace", particles=2, kl_warmup=2, clip_norm=5.0),
}


def config(name: str, epochs: int) -> TrainConfig:
    # A checkpoint after every epoch (checkpoint_seconds = 0): these tests stop runs between two of them.
    return TrainConfig.for_data(load_data("digits"), epochs=epochs, threads=1, checkpoint_seconds=0, **CONFIGS[name])


def run(cfg: TrainConfig, out, **kwargs):
    return train(cfg, out, progress=False, figures=False, **kwargs)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_stop_after_k_and_resume_equals_uninterrupted(tmp_path, name):
    full = run(config(name, 3), tmp_path / "full")
    run(config(name, 1), tmp_path / "cut")
    resumed = run(config(name, 3), tmp_path / "cut", resume=True)
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()
    assert resumed.metrics == full.metrics
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_kill_between_checkpoint_and_metrics_append_then_resume(tmp_path, monkeypatch):
    # A SIGKILL right after epoch 2's checkpoint but before its metrics line: the checkpoint wins.
    run(config("meanfield", 3), tmp_path / "full")
    real_append = run_dir_module.append_jsonl

    def append_then_die(path, record):
        if record["epoch"] == 2:
            raise SystemExit("killed")
        real_append(path, record)

    monkeypatch.setattr(run_dir_module, "append_jsonl", append_then_die)
    with pytest.raises(SystemExit):
        run(config("meanfield", 3), tmp_path / "cut")
    assert load_checkpoint(tmp_path / "cut" / CHECKPOINT)["epoch"] == 2
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 1
    monkeypatch.setattr(run_dir_module, "append_jsonl", real_append)
    run(config("meanfield", 3), tmp_path / "cut", resume=True)
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()


def test_crash_mid_epoch_then_resume(tmp_path, monkeypatch):
    run(config("meanfield", 3), tmp_path / "full")
    calls = {"n": 0}
    real_call = TrainStep.__call__

    def crash(self, x, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:  # epoch 2, step 3
            raise RuntimeError("power cut")
        return real_call(self, x, **kwargs)

    monkeypatch.setattr(TrainStep, "__call__", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        run(config("meanfield", 3), tmp_path / "cut")
    monkeypatch.setattr(TrainStep, "__call__", real_call)
    run(config("meanfield", 3), tmp_path / "cut", resume=True)
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()


def test_cyclical_kl_schedule_crash_then_resume_equals_uninterrupted(tmp_path, monkeypatch):
    # The schedule spans the run's 4 epochs (2 cycles of 2): a crash in epoch 3, then --resume, gives the same run.
    cyclical = dict(kl_schedule="cyclical", kl_cycles=2, kl_ratio=0.5, epochs=4)
    full = run(dataclasses.replace(config("meanfield", 4), **cyclical), tmp_path / "full")
    assert [r["beta"] for r in full.metrics] == [0.0, 1.0, 0.0, 1.0]
    with power_cut_at_step(monkeypatch, 15):  # 6 steps per epoch: epoch 3, step 3
        run(dataclasses.replace(config("meanfield", 4), **cyclical), tmp_path / "cut")
    resumed = run(dataclasses.replace(config("meanfield", 4), **cyclical), tmp_path / "cut", resume=True)
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # Its cycles are spread over the run's epochs: a resume with other --epochs would change them, and is refused.
    with pytest.raises(UserError, match="cyclical KL schedule spreads its cycles over the run's 4 epochs"):
        run(dataclasses.replace(config("meanfield", 6), **{**cyclical, "epochs": 6}), tmp_path / "cut", resume=True)


@pytest.mark.parametrize("failure", ["torch.save", "os.replace"])
def test_crash_during_checkpoint_save_keeps_the_previous_one(tmp_path, monkeypatch, failure):
    out = tmp_path / "run"
    run(config("meanfield", 1), out)
    before = (out / CHECKPOINT).read_bytes()

    if failure == "torch.save":
        real_save = torch.save

        def broken(obj, f, *args, **kwargs):
            f.write(b"half a checkpoint")  # a torn write, then the crash
            raise OSError("disk full")

        monkeypatch.setattr(torch, "save", broken)
    else:
        real_replace = os.replace

        def broken(src, dst):
            raise OSError("crash before rename")

        monkeypatch.setattr(atomic_module.os, "replace", broken)
    # A failing write of ours is a one-line UserError naming the file; torch.save serializes into memory first.
    with pytest.raises(OSError if failure == "torch.save" else UserError, match="disk full|could not write"):
        run(config("meanfield", 2), out, resume=True)
    monkeypatch.setattr(torch, "save", real_save) if failure == "torch.save" else monkeypatch.setattr(
        atomic_module.os, "replace", real_replace
    )
    assert (out / CHECKPOINT).read_bytes() == before
    assert load_checkpoint(out / CHECKPOINT)["epoch"] == 1
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == []
    # And the run still resumes from it.
    assert len(run(config("meanfield", 2), out, resume=True).metrics) == 2


class Payload:
    pass


def test_load_checkpoint_refuses_garbage_and_pickled_objects(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="could not read checkpoint"):
        load_checkpoint(tmp_path / "a.pt")
    torch.save({"format": 1, "payload": Payload()}, tmp_path / "b.pt")
    with pytest.raises(UserError, match="could not read checkpoint") as err:
        load_checkpoint(tmp_path / "b.pt")
    assert "\n" not in str(err.value)
    torch.save({"epoch": 3}, tmp_path / "c.pt")
    with pytest.raises(UserError, match="not a pyro-vae checkpoint"):
        load_checkpoint(tmp_path / "c.pt")
    with pytest.raises(UserError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_load_run_gives_back_the_trained_model(tmp_path):
    result = run(config("meanfield", 2), tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    assert loaded.epoch == 2 and loaded.config == result.config and loaded.metrics == result.metrics
    assert loaded.data.name == "digits" and torch.equal(loaded.data.test_x_eval, result.data.test_x_eval)
    for a, b in zip(result.guide.state_dict().values(), loaded.guide.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # The loaded model reproduces the last recorded test ELBO exactly (same evaluation seed).
    assert elbo_terms(loaded.model, loaded.guide, loaded.data.test_x_eval).elbo == result.metrics[-1]["test_elbo"]
    with pytest.raises(UserError, match="does not exist"):
        load_run(tmp_path / "nowhere")


FORMAT2_RUN = Path(__file__).parent / "data" / "format2_vamp_run"


def test_a_run_written_by_the_previous_release_loads_and_resumes_as_it_would_have(tmp_path):
    """tests/data/format2_vamp_run: a 2-epoch VampPrior run (z = 2, hidden 8, K = 3 pseudo-inputs) written by
    pyro-vae 0.1.0, whose guide was one MLP ending in the layer that outputs mu and s, and the metrics of the same
    run trained for 3 epochs without a stop by that release. Loaded now, the weights give the test ELBO 0.1.0
    recorded; resumed to epoch 3, the run ends with 0.1.0's uninterrupted metrics."""
    out = tmp_path / "run"
    shutil.copytree(FORMAT2_RUN, out)
    assert torch.load(out / CHECKPOINT, weights_only=True)["format"] == 2
    run = load_run(out)
    recorded = json.loads(torch.load(out / CHECKPOINT, weights_only=True)["metrics"])
    assert elbo_terms(run.model, run.guide, run.data.test_x_eval).elbo == pytest.approx(
        recorded[-1]["test_elbo"], rel=1e-9
    )
    result = train(dataclasses.replace(run.config, epochs=3), out, resume=True, progress=False, figures=False)
    reference = [json.loads(line) for line in (out / "metrics_uninterrupted_3_epochs.jsonl").read_text().splitlines()]
    for ours, theirs in zip(result.metrics, reference, strict=True):
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            assert ours[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key


def test_the_content_digest_survives_a_round_trip_and_changes_with_any_value():
    import io

    from pyro_vae.run_dir import content_digest

    weight = torch.randn(6, 4)
    state = {
        "model": {"w": weight, "w_t": weight.t(), "b": torch.zeros(4, dtype=torch.float64)},  # a view, non-contiguous
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.99)}]},
        "metrics": "[]",
        "flag": None,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert content_digest(loaded) == content_digest(state)
    changes = [
        lambda s: s["model"]["w"].view(-1)[13].add_(2**-20),  # one element, by less than float32's resolution at 1
        lambda s: s["model"].__setitem__("b", s["model"]["b"].float()),  # the same zeros in another dtype
        lambda s: s["model"].__setitem__("w", s["model"]["w"].reshape(4, 6)),  # the same bytes in another shape
        lambda s: s["model"].__setitem__("w", s["model"]["w"].reshape(24)),  # ... and another number of axes
        lambda s: s["optimizer"]["param_groups"][0].__setitem__("lr", 1e-3 + 1e-18),
        lambda s: s["optimizer"]["state"].__setitem__(1, s["optimizer"]["state"].pop(0)),  # a key
        lambda s: s.__setitem__("metrics", "[ ]"),
        lambda s: s.__setitem__("flag", False),
    ]
    digests = {content_digest(loaded)}
    for change in changes:
        buffer.seek(0)
        changed = torch.load(buffer, weights_only=True)
        change(changed)
        digests.add(content_digest(changed))
    assert len(digests) == len(changes) + 1  # each change gives a digest of its own
