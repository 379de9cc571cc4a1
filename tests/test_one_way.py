"""One way through a run: the CLI's ``train`` locks the run directory once, checks a resume once, and validates
each config only where one is made (``TrainConfig`` and ``VAEConfig`` validate on construction); the inner layers
(``train()``, ``Trainer``) receive the held ``RunDir`` and the checked checkpoint instead of doing it again.

Counted with wrappers around the real functions (``monkeypatch``), for a fresh ``pyro-vae train`` and a
``--resume`` of it. The training itself is the smallest that writes a checkpoint (one epoch of the digits).
Besides: where a run stands is said by ``Position`` alone, and the ``Trainer`` asks the strategy it is handed
(``pyro_vae.strategy``) for everything that differs between one process and several.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest

import pyro_vae.run_dir as run_dir_module
from pyro_vae.cli import main
from pyro_vae.config import TrainConfig, VAEConfig
from pyro_vae.data import load_data
from pyro_vae.run_dir import Position, RunDir
from pyro_vae.strategy import SingleProcess
from pyro_vae.training import Trainer, train

ARGS = ("--hidden", "16", "--batch-size", "512", "--no-progress", "--threads", "1")


def count_calls(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counters of the run directory's lock (``RunDir.lock`` and the OS lock it takes), ``RunDir.check_run`` and
    the two configs' ``validate``; the real functions still run."""
    counts: Counter = Counter()

    def counting(name: str, real):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)

        return wrapper

    real_lock = RunDir.lock  # bound to RunDir
    monkeypatch.setattr(RunDir, "lock", classmethod(lambda cls, *a, **k: counting("lock", real_lock)(*a, **k)))
    monkeypatch.setattr(run_dir_module, "_acquire", counting("flock", run_dir_module._acquire))
    monkeypatch.setattr(RunDir, "check_run", counting("check_run", RunDir.check_run))
    monkeypatch.setattr(TrainConfig, "validate", counting("TrainConfig.validate", TrainConfig.validate))
    monkeypatch.setattr(VAEConfig, "validate", counting("VAEConfig.validate", VAEConfig.validate))
    return counts


def test_cli_train_and_resume_lock_once_check_once_validate_where_made(tmp_path: Path, monkeypatch, capsys):
    out = tmp_path / "run"
    counts = count_calls(monkeypatch)
    assert main(["train", "--out", str(out), "--epochs", "1", *ARGS]) == 0
    # Fresh run. The lock: once, by the command. check_run: once (is there a run already?), in Trainer.fit.
    # TrainConfig is made 3 times: from the options, then with the data's shape (with_data_shape) and with the
    # plugins record, each a dataclasses.replace that constructs (and so validates) a new one. VAEConfig.validate
    # runs where a VAEConfig is made (the options', and with_data_shape's with x_shape), never again inside
    # TrainConfig.validate, and once in pyro_vae.build (the public entry point for a VAEConfig).
    assert counts == {
        "lock": 1,
        "flock": 1,
        "check_run": 1,
        "TrainConfig.validate": 3,
        "VAEConfig.validate": 2 + 1,
    }, counts

    counts.clear()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", *ARGS]) == 0
    # Resume. The lock: once. check_run: once, by the command (its answer goes down to the Trainer, which does not
    # check again). TrainConfig is made 5 times: from checkpoint.pt's JSON and again from it as a dict with the
    # options given now (resume_config), the checkpoint's and config.json's in check_run (to compare), and
    # the plugins record (x_shape is already the data's: with_data_shape makes none). VAEConfig.validate: once for
    # each of the 4 VAEConfigs read from JSON or a dict, and once in pyro_vae.build.
    assert counts == {
        "lock": 1,
        "flock": 1,
        "check_run": 1,
        "TrainConfig.validate": 5,
        "VAEConfig.validate": 4 + 1,
    }, counts
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # the resume did train its epoch


def test_a_second_lock_of_a_held_run_directory_is_refused_in_one_line(tmp_path: Path):
    """The lock is taken once per command: an inner layer that tried again would be refused like another writer
    (this is what makes the counts above a guarantee, not a convention)."""
    with RunDir.lock(tmp_path / "run", "outer") as run:
        assert run.locked and run.writes
        with pytest.raises(run_dir_module.UserError, match=r"is being written by PID \d+ .*\(outer\)"):
            with RunDir.lock(tmp_path / "run", "inner"):
                pass


def test_writes_need_the_lock(tmp_path: Path):
    """A ``RunDir`` made directly only reads: writing through it is a programming error, not a silent no-op."""
    with pytest.raises(RuntimeError, match="not locked"):
        RunDir(tmp_path).append({"epoch": 1})
    assert not (tmp_path / "metrics.jsonl").exists()


def test_position_is_said_one_way():
    """Every message about where a run stands comes from ``Position``: mid-epoch it is the epoch in progress."""
    assert str(Position(3)) == "epoch 3"
    assert str(Position(3, 7)) == "step 7 of epoch 4"
    assert Position.of({"epoch": 1, "partial": {"step": 2}}) == Position(1, 2, saved=True)
    assert Position.of({"epoch": 2}) == Position(2, 0, saved=True)
    assert Position(3, 7).kept(Path("d/checkpoint.pt")) == "no checkpoint was written"
    assert Position(3, 7, saved=True).kept(Path("d/checkpoint.pt")) == (
        "the checkpoint of step 7 of epoch 4 is kept in d/checkpoint.pt"
    )


class RecordingStrategy(SingleProcess):
    """``SingleProcess``, counting what the trainer asks of it."""

    def __init__(self) -> None:
        self.calls: Counter = Counter()

    def make_step(self, *args, **kwargs):
        self.calls["make_step"] += 1
        return super().make_step(*args, **kwargs)

    def begin_epoch(self, epoch: int, first_step: int) -> None:
        self.calls["begin_epoch"] += 1

    def elbo_terms(self, *args, **kwargs):
        self.calls["elbo_terms"] += 1
        return super().elbo_terms(*args, **kwargs)

    def checkpoint_due(self, due: bool) -> bool:
        self.calls["checkpoint_due"] += 1
        return due

    def before_first_write(self) -> None:
        self.calls["before_first_write"] += 1

    def after_save(self) -> None:
        self.calls["after_save"] += 1


def test_the_trainer_is_handed_its_strategy_and_asks_it(tmp_path: Path):
    """A strategy given to the Trainer is the one used, for every operation that differs between processes; with
    the plain operations it trains exactly as ``train()``'s default (same metrics to the last bit)."""
    data = load_data("digits")
    config = TrainConfig.for_data(data, z_dim=2, hidden=(16,), epochs=3, batch_size=512, threads=1)
    config = dataclasses.replace(config, checkpoint_seconds=1e9)  # one checkpoint, after the last epoch
    strategy = RecordingStrategy()
    result = Trainer(config, tmp_path / "given", data=data, progress=False, strategy=strategy).fit()
    assert strategy.calls == {
        "make_step": 1,
        "begin_epoch": 3,
        "elbo_terms": 3,  # eval_every 1
        "checkpoint_due": 3,
        "before_first_write": 1,
        "after_save": 1,
    }
    reference = train(config, tmp_path / "default", data=data, progress=False, figures=False)
    assert result.metrics == reference.metrics
