"""Ctrl-C (SIGINT) and SIGTERM during training: the step in progress finishes, a mid-epoch checkpoint is
saved, and ``--resume`` goes on from the next step with the same result as an uninterrupted run.

The signals are real (``os.kill`` of this process from inside a training step, so they land at a known
step); ``tests/test_crash_safety.py`` sends them from outside to a training subprocess.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest
import torch

import pyro_vae.strategy as strategy_module
from pyro_vae.cli import main
from pyro_vae.data import load_data
from pyro_vae.errors import UserError
from pyro_vae.interrupts import DeferredInterrupts
from pyro_vae.run_dir import CHECKPOINT, load_checkpoint, load_run, save_checkpoint
from pyro_vae.step import TrainStep
from pyro_vae.training import TrainConfig, TrainingInterrupted, train

#: 1,500 digits in batches of 256: 6 steps per epoch. The signal is sent during step 2 of epoch 2.
STEPS_PER_EPOCH = 6
SIGNAL_AT = STEPS_PER_EPOCH + 2
CONFIGS = {
    # the default estimator, with dynamic binarisation: the epoch's Bernoulli draw must be redrawn exactly
    "meanfield": dict(z_dim=2, hidden=(16,), batch_size=256),
    # Monte Carlo KL, two vectorised particles, KL warm-up and clipping: more random draws per step
    "trace-warmup": dict(z_dim=3, hidden=(16,), batch_size=256, elbo="trace", particles=2, kl_warmup=2, clip_norm=5.0),
}


def config(name: str, epochs: int = 3) -> TrainConfig:
    # A checkpoint after every epoch (checkpoint_seconds = 0): these tests stop runs between two of them.
    return TrainConfig.for_data(load_data("digits"), epochs=epochs, threads=1, checkpoint_seconds=0, **CONFIGS[name])


def run(cfg: TrainConfig, out, **kwargs):
    return train(cfg, out, progress=False, figures=False, **kwargs)


class StepCounter:
    """Counts training steps; at step ``at`` it calls ``action`` after the real step (or before, for
    ``before=True``)."""

    def __init__(self, monkeypatch, at: int | None = None, action=None, before: bool = False) -> None:
        self.calls = 0
        real = TrainStep.__call__

        def call(step, x, **kwargs):
            self.calls += 1
            if before and self.calls == at:
                action(step)
            loss = real(step, x, **kwargs)
            if not before and self.calls == at:
                action(step)
            return loss

        monkeypatch.setattr(TrainStep, "__call__", call)


def send(sig: signal.Signals, times: int = 1):
    def action(step) -> None:
        for _ in range(times):
            os.kill(os.getpid(), sig)

    return action


def adam_steps(state: dict) -> int:
    """The number of optimizer steps taken, from a checkpoint's Adam state."""
    return int(next(iter(state["optimizer"]["state"].values()))["step"])


def assert_same_weights(a, b) -> None:
    for part in ("model", "guide"):
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), part


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_signal_mid_epoch_saves_that_step_and_resume_equals_uninterrupted(tmp_path, monkeypatch, name, sig):
    full = run(config(name), tmp_path / "full")
    counter = StepCounter(monkeypatch, at=SIGNAL_AT, action=send(sig))
    with pytest.raises(TrainingInterrupted) as info:
        run(config(name), tmp_path / "cut")
    assert counter.calls == SIGNAL_AT  # the step during which the signal came was finished, no more
    err = info.value
    assert (err.epoch, err.step, err.signum) == (1, 2, sig)
    assert str(err) == (
        f"interrupted at step 2 of {STEPS_PER_EPOCH} in epoch 2; saved {tmp_path / 'cut' / CHECKPOINT} "
        "(continue with --resume)"
    )
    state = load_checkpoint(tmp_path / "cut" / CHECKPOINT)
    assert state["epoch"] == 1 and state["partial"]["step"] == 2
    assert adam_steps(state) == SIGNAL_AT  # the weights are those after the interrupted step
    assert len(state["rng"]["torch"]) == len(state["partial"]["epoch_rng"]["torch"])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers given back

    counter = StepCounter(monkeypatch)
    resumed = run(config(name), tmp_path / "cut", resume=True)
    assert counter.calls == 3 * STEPS_PER_EPOCH - SIGNAL_AT  # no step redone, none skipped
    assert resumed.metrics == full.metrics
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()
    assert_same_weights(resumed, full)


def test_cli_exit_codes_and_one_line_messages(tmp_path, monkeypatch, capsys):
    common = ["--hidden", "16", "--z-dim", "2", "--epochs", "3", "--batch-size", "256", "--threads", "1"]
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        out = tmp_path / sig.name
        StepCounter(monkeypatch, at=SIGNAL_AT, action=send(sig))
        assert main(["train", "--out", str(out), "--no-progress", *common]) == code
        err = capsys.readouterr().err
        assert err == (
            f"pyro-vae: interrupted at step 2 of {STEPS_PER_EPOCH} in epoch 2; saved {out / CHECKPOINT} "
            "(continue with --resume)\n"
        )
    # Resuming with fewer epochs than the one in progress cannot work: say so.
    assert main(["train", "--out", str(out), "--resume", "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint is at step 2 of epoch 2; ask for --epochs >= 2" in err and "\n" not in err.strip()
    # A run stopped mid-epoch can be evaluated; the report says where it stopped.
    assert main(["evaluate", str(out), "--num-samples", "2", "--num-examples", "20"]) == 0
    assert "step 2 of epoch 2 (stopped mid-epoch)" in capsys.readouterr().out
    assert load_run(out, with_data=False).step == 2
    # The progress bar's resume message names the step.
    StepCounter(monkeypatch)
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert f"resuming {out} at step 2 of epoch 2 of 3" in capsys.readouterr().err


def test_second_ctrl_c_stops_at_once_and_keeps_the_last_epoch(tmp_path, monkeypatch):
    full = run(config("meanfield"), tmp_path / "full")
    StepCounter(monkeypatch, at=SIGNAL_AT, action=send(signal.SIGINT, times=2), before=True)
    with pytest.raises(TrainingInterrupted) as info:
        run(config("meanfield"), tmp_path / "cut")
    assert (info.value.epoch, info.value.step) == (1, 0)
    assert (
        str(info.value)
        == f"interrupted; the checkpoint of epoch 1 is kept in {tmp_path / 'cut' / CHECKPOINT} (continue with --resume)"
    )
    state = load_checkpoint(tmp_path / "cut" / CHECKPOINT)
    assert state["epoch"] == 1 and "partial" not in state and adam_steps(state) == STEPS_PER_EPOCH
    StepCounter(monkeypatch)
    assert_same_weights(run(config("meanfield"), tmp_path / "cut", resume=True), full)


def test_signal_during_evaluation_saves_the_finished_epoch(tmp_path, monkeypatch):
    full = run(config("meanfield"), tmp_path / "full")
    real = strategy_module.elbo_terms

    def signal_during_evaluation(at: int):
        calls = []

        def evaluate(*args, **kwargs):
            calls.append(1)
            if len(calls) == at:
                os.kill(os.getpid(), signal.SIGINT)
            return real(*args, **kwargs)

        return evaluate

    monkeypatch.setattr(strategy_module, "elbo_terms", signal_during_evaluation(at=1))
    with pytest.raises(TrainingInterrupted, match=r"^interrupted after epoch 1; saved .* \(continue with --resume\)$"):
        run(config("meanfield"), tmp_path / "cut")
    state = load_checkpoint(tmp_path / "cut" / CHECKPOINT)
    assert state["epoch"] == 1 and "partial" not in state
    assert (tmp_path / "cut" / "metrics.jsonl").read_text().count("\n") == 1
    # During the last epoch's evaluation (the second of the resumed run): the run is complete, only its
    # figures are left.
    monkeypatch.setattr(strategy_module, "elbo_terms", signal_during_evaluation(at=2))
    with pytest.raises(TrainingInterrupted) as info:
        run(config("meanfield"), tmp_path / "cut", resume=True)
    assert str(info.value) == (
        f"interrupted after epoch 3; saved {tmp_path / 'cut' / CHECKPOINT} (training is complete; figures not "
        f"written: pyro-vae plot {tmp_path / 'cut'})"
    )
    assert load_run(tmp_path / "cut", with_data=False).metrics == full.metrics


def test_signal_with_non_finite_weights_saves_nothing_new(tmp_path, monkeypatch):
    def poison_then_signal(step) -> None:
        with torch.no_grad():
            next(iter(step.params)).fill_(float("nan"))
        os.kill(os.getpid(), signal.SIGINT)

    StepCounter(monkeypatch, at=SIGNAL_AT, action=poison_then_signal)
    with pytest.raises(UserError, match=r"non-finite weights at epoch 2, step 2; the checkpoint of epoch 1 is kept"):
        run(config("meanfield"), tmp_path / "cut")
    state = load_checkpoint(tmp_path / "cut" / CHECKPOINT)
    assert state["epoch"] == 1 and "partial" not in state
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_incomplete_partial_record_is_refused(tmp_path):
    path = tmp_path / CHECKPOINT
    state = {k: 0 for k in ("epoch", "config", "model", "guide", "optimizer", "rng", "metrics")}
    save_checkpoint({"format": 2, **state, "partial": {"step": 3}}, path)
    with pytest.raises(
        UserError, match=r"not a complete pyro-vae checkpoint \(no partial.epoch_rng, partial.loss_sum\)"
    ):
        load_checkpoint(path)
    save_checkpoint({"format": 1, **state}, path)  # the layout before mid-epoch checkpoints still loads
    assert load_checkpoint(path)["epoch"] == 0


def test_deferred_interrupts_restore_handlers_and_respect_ignored_signals():
    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with DeferredInterrupts() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # nohup'ed: stays ignored
            assert signal.getsignal(signal.SIGTERM) == stop._handle
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested and stop.signum == signal.SIGTERM
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGTERM)  # the second signal stops at once
        assert signal.getsignal(signal.SIGTERM) == before
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_deferred_interrupts_do_nothing_outside_the_main_thread():
    seen = {}

    def body() -> None:
        with DeferredInterrupts() as stop:
            seen["handler"] = signal.getsignal(signal.SIGINT)
            seen["requested"] = stop.requested

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == {"handler": signal.default_int_handler, "requested": False}


def test_kl_ablation_interrupted_says_how_to_continue_the_run(tmp_path, monkeypatch, capsys):
    StepCounter(monkeypatch, at=2, action=send(signal.SIGINT))
    assert main(["kl-ablation", "--out", str(tmp_path), "--no-progress", "--epochs", "2", "--threads", "1"]) == 130
    err = capsys.readouterr().err
    assert err == (
        f"pyro-vae: interrupted in {tmp_path / 'with_kl'}; continue the experiment with pyro-vae kl-ablation --out "
        f"{tmp_path} --resume\n"
    )
    StepCounter(monkeypatch)
    assert main(["kl-ablation", "--out", str(tmp_path), "--resume", "--no-progress"]) == 0
    assert [load_run(tmp_path / name, with_data=False).epoch for name in ("with_kl", "without_kl")] == [2, 2]
    assert (tmp_path / "summary.json").exists()


def test_ctrl_c_while_writing_figures_says_training_is_complete(tmp_path, monkeypatch):
    import pyro_vae.figures as figures_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(figures_module, "write_figures", interrupted)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as info:
        train(config("meanfield", epochs=1), out, progress=False)
    assert str(info.value) == (
        f"interrupted while writing figures; training is complete in {out / CHECKPOINT} "
        f"(pyro-vae plot {out} writes them)"
    )
    assert load_checkpoint(out / CHECKPOINT)["epoch"] == 1
