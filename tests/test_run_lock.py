"""One writer per run directory, with real processes: ``python -m pyro_vae ...`` subprocesses and real signals.

- Two ``train --resume`` on one run: the second is refused at once with one line naming the first one's PID,
  ``evaluate`` too; the first finishes with every epoch recorded once, and its run equals an uninterrupted one
  (``metrics.jsonl`` byte for byte, the weights). Meanwhile a reader loads the checkpoint again and again without
  a lock: every load passes the digest check. To refuse the second writer whatever the machine's load, the first
  is paused (SIGSTOP) while it holds the lock, and continued (SIGCONT) afterwards.
- SIGKILL of the lock's holder: its lock file stays behind, naming it, yet the next writer takes the lock (the
  kernel dropped it with the process), removes the dead writer's temporary file, and resumes to the uninterrupted
  run's result.
- The run directory's write permission taken away mid-run (a child without root's override of file modes):
  one line naming the file and the cause, the last checkpoint and its metrics intact, no temporary file; after
  the permission is given back, ``--resume`` ends with the uninterrupted run's result.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyro_vae.run_dir import CHECKPOINT, LOCK, METRICS, load_checkpoint
from tests.test_bad_input import drop_permission_override

pytestmark = pytest.mark.slow  # about ten training processes

REPO = Path(__file__).resolve().parent.parent
EPOCHS = 6
#: 1,500 digits in batches of 8: 188 steps per epoch, about 0.5 s on one idle core.
# A checkpoint after every epoch (--checkpoint-seconds 0): these tests act on runs between two of them.
OPTIONS = ("--hidden", "64", "--batch-size", "8", "--threads", "1", "--no-progress", "--checkpoint-seconds", "0")


def start(*args: object, unprivileged: bool = False) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    kwargs = {"preexec_fn": drop_permission_override} if unprivileged and os.geteuid() == 0 else {}
    return subprocess.Popen(
        [sys.executable, "-m", "pyro_vae", *map(str, args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def train(out: Path, *extra: object, unprivileged: bool = False) -> subprocess.Popen:
    return start("train", "--out", out, *OPTIONS, *extra, unprivileged=unprivileged)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, stderr = proc.communicate(timeout=900)
    return proc.returncode, stderr


def wait_until(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 900
    while not condition():
        assert proc.poll() is None, f"ended before {what}: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, f"too slow: {what}"
        time.sleep(0.01)


def recorded_pid(out: Path) -> int | None:
    try:
        return int((out / LOCK).read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None


def epochs_done(out: Path) -> int:
    path = out / METRICS
    return len(path.read_text().splitlines()) if path.exists() else 0


def one_line(code: int, stderr: str) -> str:
    assert code == 2, stderr
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
    return stderr.strip()


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = load_checkpoint(a / CHECKPOINT), load_checkpoint(b / CHECKPOINT)
    return all(torch.equal(sa[part][k], sb[part][k]) for part in ("model", "guide") for k in sa[part])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """An uninterrupted run of EPOCHS epochs, started at once and awaited when a test needs it."""
    out = tmp_path_factory.mktemp("lock") / "full"
    proc = train(out, "--epochs", EPOCHS)

    def result() -> Path:
        if proc.returncode is None:
            code, stderr = finish(proc)
            assert code == 0, stderr
        return out

    yield result
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_second_writer_is_refused_at_once_naming_the_first_and_no_record_is_doubled(tmp_path, uninterrupted):
    out = tmp_path / "run"
    code, stderr = finish(train(out, "--epochs", 1))
    assert code == 0, stderr
    first = train(out, "--resume", "--epochs", EPOCHS)
    wait_until(lambda: recorded_pid(out) == first.pid and epochs_done(out) >= 2, first, "the first writer's epoch 2")
    first.send_signal(signal.SIGSTOP)  # it holds the lock, whatever the load of the machine
    try:
        second = train(out, "--resume", "--epochs", EPOCHS)
        evaluating = start("evaluate", out, "--num-samples", 10)
        holder = f"PID {first.pid} on {socket.gethostname()} (pyro-vae train)"
        for proc in (second, evaluating):
            assert one_line(*finish(proc)) == (
                f"pyro-vae: error: the run in {out} is being written by {holder}; wait for it to finish (or stop "
                "it), then run this again"
            )
    finally:
        first.send_signal(signal.SIGCONT)
    # A reader needs no lock: it never sees a half-written checkpoint (each load checks the digest).
    seen = []
    while first.poll() is None:
        seen.append(load_checkpoint(out / CHECKPOINT)["epoch"])
        time.sleep(0.05)
    code, stderr = finish(first)
    assert code == 0, stderr
    assert seen == sorted(seen) and len(seen) >= 3
    assert [r.split('"epoch": ')[1].split(",")[0] for r in (out / METRICS).read_text().splitlines()] == [
        str(e) for e in range(1, EPOCHS + 1)
    ]
    full = uninterrupted()
    assert (out / METRICS).read_text() == (full / METRICS).read_text()
    assert same_weights(out, full)
    assert not (out / LOCK).exists()


def test_sigkill_of_the_lock_holder_leaves_no_lock_and_the_next_writer_goes_on(tmp_path, uninterrupted):
    out = tmp_path / "run"
    killed = train(out, "--epochs", EPOCHS)
    wait_until(lambda: recorded_pid(out) == killed.pid and epochs_done(out) >= 1, killed, "epoch 1")
    killed.send_signal(signal.SIGKILL)
    assert finish(killed)[0] == -signal.SIGKILL
    assert recorded_pid(out) == killed.pid  # its record stays behind; the kernel's lock went with it
    dead_temporary = out / f".{CHECKPOINT}.{killed.pid}.tmp"  # as a SIGKILL during a save leaves
    dead_temporary.write_bytes(b"half a checkpoint")

    code, stderr = finish(train(out, "--resume", "--epochs", EPOCHS))
    assert code == 0, stderr
    assert not dead_temporary.exists() and not (out / LOCK).exists()
    full = uninterrupted()
    assert (out / METRICS).read_text() == (full / METRICS).read_text()
    assert same_weights(out, full)


def test_write_permission_taken_away_mid_run_is_one_line_and_loses_nothing(tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = train(out, "--epochs", EPOCHS, unprivileged=True)
    wait_until(lambda: epochs_done(out) >= 1, proc, "epoch 1")
    out.chmod(0o555)
    try:
        line = one_line(*finish(proc))
    finally:
        out.chmod(0o755)
    found = re.fullmatch(
        rf"pyro-vae: error: could not write {re.escape(str(out))}/\S+ \(Permission denied\); the checkpoint of "
        rf"epoch (\d+) is kept in {re.escape(str(out / CHECKPOINT))}; make the directory writable again, then "
        "continue with --resume",
        line,
    )
    assert found, line
    kept = int(found[1])
    assert load_checkpoint(out / CHECKPOINT)["epoch"] == kept == epochs_done(out)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    full = uninterrupted()
    lines = (full / METRICS).read_text().splitlines(keepends=True)
    assert (out / METRICS).read_text() == "".join(lines[:kept])

    code, stderr = finish(train(out, "--resume", "--epochs", EPOCHS))
    assert code == 0, stderr
    assert (out / METRICS).read_text() == (full / METRICS).read_text()
    assert same_weights(out, full)
