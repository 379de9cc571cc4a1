"""Crash safety of `pyro-vae train`, with real signals sent to a real training process.

SIGKILL in the middle of an epoch (nothing runs after it: no handler, no cleanup), then ``--resume``:
on CPU the final metrics file equals an uninterrupted run's byte for byte, the final weights are equal,
and only the epoch in progress is redone (every epoch reported finished was in the checkpoint).
SIGINT (Ctrl-C): exit code 130, one short line naming the checkpoint, no traceback; the checkpoint
loads, and ``--resume`` again finishes exactly like the uninterrupted run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyro_vae.checkpoint import CHECKPOINT, METRICS, load_checkpoint

pytestmark = pytest.mark.slow  # three training processes and two resumptions

REPO = Path(__file__).resolve().parent.parent
EPOCHS = 8
#: 188 steps per epoch (about 0.5 s): long enough to be interrupted in the middle of one.
OPTIONS = ("--hidden", "64", "--batch-size", "8", "--epochs", str(EPOCHS), "--threads", "1", "--no-progress")


def start(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.Popen(
        [sys.executable, "-m", "pyro_vae", "train", "--out", str(out), *OPTIONS, *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = proc.communicate(timeout=600)
    return proc.returncode, stdout, stderr


def epochs_done(out: Path) -> int:
    path = out / METRICS
    return len(path.read_text().splitlines()) if path.exists() else 0


def interrupt_mid_epoch(proc: subprocess.Popen, out: Path, after: int, sig: signal.Signals) -> int:
    """Wait until epoch ``after`` is reported, then send ``sig`` half an epoch later; return the epochs
    reported finished just before the signal."""
    deadline = time.monotonic() + 600
    seen: dict[int, float] = {}
    while epochs_done(out) < after:
        assert proc.poll() is None, f"training ended early: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "training too slow"
        seen.setdefault(epochs_done(out), time.monotonic())
        time.sleep(0.01)
    now = time.monotonic()
    epoch_time = now - seen.get(after - 1, seen.get(0, now))
    time.sleep(epoch_time / 2)
    done = epochs_done(out)
    assert proc.poll() is None and done < EPOCHS
    proc.send_signal(sig)
    return done


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """An uninterrupted run, started at once and awaited when a test needs it."""
    out = tmp_path_factory.mktemp("crash") / "full"
    proc = start(out)

    def result() -> Path:
        if proc.returncode is None:
            code, _, stderr = finish(proc)
            assert code == 0, stderr
        return out

    yield result
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = load_checkpoint(a / CHECKPOINT), load_checkpoint(b / CHECKPOINT)
    return all(
        sa[part].keys() == sb[part].keys() and all(torch.equal(sa[part][k], sb[part][k]) for k in sa[part])
        for part in ("model", "guide")
    )


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path, uninterrupted):
    out = tmp_path / "killed"
    proc = start(out)
    reported = interrupt_mid_epoch(proc, out, after=2, sig=signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL
    saved = load_checkpoint(out / CHECKPOINT)["epoch"]
    # Every epoch reported finished is in the checkpoint: only the epoch in progress is redone.
    assert reported <= saved < EPOCHS

    code, _, stderr = finish(start(out, "--resume"))
    assert code == 0, stderr
    full = uninterrupted()
    assert (out / METRICS).read_text() == (full / METRICS).read_text()
    assert epochs_done(out) == EPOCHS
    assert same_weights(out, full)


def test_sigint_exits_130_with_one_line_and_a_checkpoint_to_resume(tmp_path, uninterrupted):
    out = tmp_path / "interrupted"
    proc = start(out)
    interrupt_mid_epoch(proc, out, after=2, sig=signal.SIGINT)
    code, stdout, stderr = finish(proc)
    assert code == 130
    assert "Traceback" not in stderr + stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    match = re.fullmatch(
        r"pyro-vae: interrupted during epoch (\d+); the checkpoint of epoch (\d+) is in (.+) "
        r"\(continue with --resume\)",
        lines[0],
    )
    assert match, lines[0]
    in_progress, saved = int(match[1]), int(match[2])
    assert in_progress == saved + 1 and Path(match[3]) == out / CHECKPOINT
    assert load_checkpoint(out / CHECKPOINT)["epoch"] == saved >= 1

    code, _, stderr = finish(start(out, "--resume"))
    assert code == 0, stderr
    full = uninterrupted()
    assert (out / METRICS).read_text() == (full / METRICS).read_text()
    assert same_weights(out, full)
