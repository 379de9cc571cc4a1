"""Reliability of a run directory through the command line (``pyro_vae.cli.main``, in this process): full disks,
read-only and failing file systems, checkpoints and data changed after a run wrote them, stale derived files,
resumes with nothing to do, and kl-ablation's overwrite and resume rules.

Each failure must be exactly one line ``pyro-vae: error: ...`` naming the file and the cause, exit code 2, and
leave the run's files as they were (bytes and modification times), with no temporary file. The truth a resumed or
recovered run is held to is an uninterrupted run trained the same way: its ``metrics.jsonl``, byte for byte.

Full disk: a 1 MB tmpfs mounted for the test, filled to 4 pages below its size, where the machine lets the test
mount one (root); elsewhere an ``ENOSPC`` injected into the write. Each test says which it used
(``record_property("full_disk", ...)`` and a warning when it falls back). A full disk during a metrics append is
always injected: tmpfs allocates whole 4 KB pages, and the ~200-byte line lands in a page the file already has,
so a real one cannot be arranged reliably; the injection writes half the line before failing, as a real one may.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import pyro_vae.atomic as atomic_module
from pyro_vae.cli import main
from pyro_vae.commands import compare_estimators, evaluate
from pyro_vae.run_dir import CHECKPOINT, DERIVED_FILES, METRICS, PREVIOUS, load_checkpoint, load_run

# A checkpoint after every epoch (--checkpoint-seconds 0): these tests damage or stop runs between two of them.
TINY = ["--hidden", "8", "--batch-size", "256", "--threads", "1", "--no-progress", "--checkpoint-seconds", "0"]
PAGE = 4096


def cli(capsys, *args: object) -> tuple[int, str]:
    """Run ``pyro-vae ARGS`` here; (exit code, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def train(capsys, out: Path, epochs: int, *extra: object) -> None:
    code, err = cli(capsys, "train", "--out", out, "--epochs", epochs, *TINY, *extra)
    assert code == 0, err


def resume(capsys, out: Path, epochs: int, *extra: object) -> tuple[int, str]:
    return cli(capsys, "train", "--out", out, "--resume", "--epochs", epochs, "--no-progress", *extra)


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir()) if p.is_file()}


def one_line_error(code: int, err: str, *expect: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyro-vae: error: "), err
    for text in expect:
        assert text in lines[0], lines[0]
    return lines[0]


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``reference(n)``: metrics.jsonl of an uninterrupted n-epoch run with the options used here."""
    root = tmp_path_factory.mktemp("reference")
    cache: dict[int, str] = {}

    def metrics(epochs: int) -> str:
        if epochs not in cache:
            out = root / f"epochs{epochs}"
            assert main(["train", "--out", str(out), "--epochs", str(epochs), *TINY]) == 0
            cache[epochs] = (out / METRICS).read_text()
        return cache[epochs]

    return metrics


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1M"):
    """A tmpfs of ``size`` mounted at ``path``, or None where mounting is not permitted."""
    path.mkdir()
    mounted = (
        os.geteuid() == 0
        and shutil.which("mount") is not None
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield path if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path, leave: int) -> Path:
    """Fill the file system of ``disk`` up to ``leave`` bytes; the filler file."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - leave))
    st = os.statvfs(disk)
    assert st.f_bavail * st.f_frsize == leave
    return filler


def inject(monkeypatch, name: str, code: int, when=lambda data: True) -> None:
    """Make our writes to files called ``name`` write half their bytes, then fail with ``code``."""
    real = atomic_module._write_all

    def failing(fd: int, data) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(name) and when(bytes(data)):
            os.write(fd, bytes(data[: len(data) // 2]))
            raise OSError(code, os.strerror(code))
        real(fd, data)

    monkeypatch.setattr(atomic_module, "_write_all", failing)


def test_full_disk_during_the_checkpoint_is_one_line_and_keeps_the_last_good_one(
    tmp_path, capsys, monkeypatch, reference, record_property
):
    with tmpfs(tmp_path / "disk") as disk:
        kind = "tmpfs (1 MB, filled)" if disk else "injected ENOSPC"
        record_property("full_disk", kind)
        out = (disk or tmp_path) / "run"
        train(capsys, out, 1)
        for figure in out.glob("*.png"):
            figure.unlink()  # else the resume frees their 55 pages when it drops them as stale
        before = snapshot(out)
        if disk:
            filler = fill(disk, leave=4 * PAGE)  # the checkpoint takes 11 pages
        else:
            warnings.warn("tmpfs cannot be mounted here: full disk injected as ENOSPC", stacklevel=1)
            inject(monkeypatch, ".tmp", errno.ENOSPC, when=lambda data: len(data) > 4 * PAGE)
        code, err = resume(capsys, out, 2)
        one_line_error(
            code,
            err,
            f"could not write {out / CHECKPOINT} (No space left on device); the checkpoint of epoch 1 is kept in "
            f"{out / CHECKPOINT}; free space on its file system, then continue with --resume",
        )
        after = snapshot(out)
        # The previous checkpoint is let go before the write, to make room: it is now the one kept.
        assert after.pop(PREVIOUS)[0] == before[CHECKPOINT][0]
        assert after == before, kind  # checkpoint, metrics and config as they were
        assert temporaries(out) == [] and load_checkpoint(out / CHECKPOINT)["epoch"] == 1
        if disk:
            filler.unlink()
        else:
            monkeypatch.undo()
        code, err = resume(capsys, out, 2)
        assert code == 0, err
        assert (out / METRICS).read_text() == reference(2)


def test_full_disk_during_a_metrics_append_cuts_the_torn_line_and_keeps_the_saved_epoch(
    tmp_path, capsys, monkeypatch, reference
):
    out = tmp_path / "run"
    train(capsys, out, 1)
    one_epoch = (out / METRICS).read_text()
    inject(monkeypatch, METRICS, errno.ENOSPC, when=lambda data: b'"epoch": 2' in data)
    code, err = resume(capsys, out, 3)
    one_line_error(
        code,
        err,
        f"could not write {out / METRICS} (No space left on device); the checkpoint of epoch 2 is kept in "
        f"{out / CHECKPOINT}; free space on its file system, then continue with --resume",
    )
    # The half line that reached the disk is gone; epoch 2's checkpoint was saved before its line.
    assert (out / METRICS).read_text() == one_epoch
    assert load_checkpoint(out / CHECKPOINT)["epoch"] == 2 and temporaries(out) == []
    monkeypatch.undo()
    code, err = resume(capsys, out, 3)
    assert code == 0, err
    assert (out / METRICS).read_text() == reference(3)


def test_an_io_error_on_the_first_checkpoint_says_nothing_was_saved_and_run_again_works(
    tmp_path, capsys, monkeypatch, reference
):
    out = tmp_path / "run"
    inject(monkeypatch, ".tmp", errno.EIO, when=lambda data: len(data) > 4 * PAGE)
    code, err = cli(capsys, "train", "--out", out, "--epochs", 2, *TINY)
    one_line_error(
        code,
        err,
        f"could not write {out / CHECKPOINT} (Input/output error); no checkpoint was written; check the disk",
        "then run it again",
    )
    assert not (out / CHECKPOINT).exists() and temporaries(out) == []
    monkeypatch.undo()
    train(capsys, out, 2)  # "run it again": no --overwrite needed, nothing was saved
    assert (out / METRICS).read_text() == reference(2)


def read_only(monkeypatch, directory: Path, disk: Path | None) -> str:
    """Make ``directory`` read-only: remount its tmpfs, else chmod (root loses its override in this process's
    view by a patched os.open raising EACCES, since root ignores file modes). The expected reason."""
    if disk is not None:
        assert subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True).returncode == 0
        return "Read-only file system"
    real_open = os.open

    def denied(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and Path(path).parent == directory:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    return "Permission denied"


def test_a_read_only_run_directory_at_resume_is_one_line_and_changes_nothing(
    tmp_path, capsys, monkeypatch, record_property
):
    with tmpfs(tmp_path / "disk") as disk:
        record_property("read_only", "tmpfs remounted read-only" if disk else "EACCES injected into os.open")
        if disk is None:
            warnings.warn("tmpfs cannot be mounted here: read-only directory injected as EACCES", stacklevel=1)
        out = (disk or tmp_path) / "run"
        train(capsys, out, 1)
        before = snapshot(out)
        reason = read_only(monkeypatch, out, disk)
        code, err = resume(capsys, out, 2)
        one_line_error(
            code,
            err,
            f"cannot write to the run directory {out} ({reason}); make it writable, or copy the run elsewhere and "
            "resume there",
        )
        code, err = cli(capsys, "evaluate", out, "--num-samples", 10)
        one_line_error(code, err, f"cannot write to the run directory {out} ({reason}); make it writable")
        monkeypatch.undo()
        assert snapshot(out) == before
        assert load_run(out).epoch == 1  # readers need no lock, and no write


def flip_a_weight_bit(path: Path) -> tuple[str, torch.Tensor]:
    """Flip one bit in the middle of the largest weight's bytes inside the torch zip file; (its name, its value)."""
    state = torch.load(path, weights_only=True)
    name, weight = max(state["model"].items(), key=lambda kv: kv[1].numel())
    data = bytearray(path.read_bytes())
    at = bytes(data).find(weight.numpy().tobytes())
    assert at > 0
    data[at + weight.numel() * 2 + 1] ^= 0x04
    path.write_bytes(bytes(data))
    return name, weight


def test_a_checkpoint_changed_after_it_was_written_is_refused_and_the_previous_one_offered(tmp_path, capsys, reference):
    out = tmp_path / "run"
    train(capsys, out, 2)
    name, weight = flip_a_weight_bit(out / CHECKPOINT)
    # torch.load does not notice (the zip's CRC-32s are not checked): the weight it gives back differs.
    assert not torch.equal(torch.load(out / CHECKPOINT, weights_only=True)["model"][name], weight)
    before = snapshot(out)
    offer = (
        f"the previous checkpoint, {out / PREVIOUS} (epoch 1), is intact: pyro-vae train --out {out} --resume "
        "--from-previous goes on from it"
    )
    for args in (("train", "--out", out, "--resume", "--epochs", 3), ("evaluate", out), ("plot", out)):
        code, err = cli(capsys, *args)
        one_line_error(code, err, f"checkpoint {out / CHECKPOINT} was changed after it was written", offer)
    assert snapshot(out) == before
    code, err = resume(capsys, out, 3, "--from-previous")
    assert code == 0, err
    assert (out / METRICS).read_text() == reference(3)  # epoch 2 redone from epoch 1: the same run


def test_a_checkpoint_of_another_run_or_an_older_copy_is_refused_at_resume(tmp_path, capsys, reference):
    run, other = tmp_path / "run", tmp_path / "other"
    train(capsys, run, 1)
    train(capsys, other, 1, "--hidden", "16")
    older = (run / CHECKPOINT).read_bytes()
    assert resume(capsys, run, 2)[0] == 0

    own = (run / CHECKPOINT).read_bytes()
    shutil.copy(other / CHECKPOINT, run / CHECKPOINT)  # intact, but another run's
    before = snapshot(run)
    for args in (("train", "--out", run, "--resume", "--epochs", 3), ("evaluate", run)):
        code, err = cli(capsys, *args)
        one_line_error(code, err, f"{run / 'config.json'} and {run / CHECKPOINT} describe different runs", "hidden")
    assert snapshot(run) == before

    (run / CHECKPOINT).write_bytes(older)  # this run's own checkpoint of epoch 1, put back over epoch 2's
    code, err = resume(capsys, run, 3)
    one_line_error(code, err, f"{run / METRICS} records 2 epochs but {run / CHECKPOINT} holds epoch 1", "move")
    (run / METRICS).rename(tmp_path / "aside.jsonl")  # going on from it deliberately, as the message says
    assert resume(capsys, run, 3)[0] == 0
    assert (run / METRICS).read_text() == reference(3)
    assert own != older


def test_changed_data_are_refused_at_resume_and_evaluate(tmp_path, capsys):
    rows = np.random.default_rng(0).random((120, 16)).astype(np.float32)
    path = tmp_path / "rows.npy"
    np.save(path, rows)
    out = tmp_path / "run"
    train(capsys, out, 1, "--dataset", path)
    changed = rows.copy()
    changed[7, 3] = 0.5
    np.save(path, changed)
    before = snapshot(out)
    for args in (("train", "--out", out, "--resume", "--epochs", 2), ("evaluate", out, "--num-samples", 10)):
        code, err = cli(capsys, *args)
        one_line_error(code, err, "the data set", "differs from the one the run in", "restore those data")
    assert snapshot(out) == before
    np.save(path, rows)
    assert resume(capsys, out, 2)[0] == 0


def test_resume_with_nothing_to_do_says_so_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    train(capsys, out, 1)
    before = snapshot(out)
    code, err = resume(capsys, out, 1)
    assert code == 0
    assert err.strip() == (
        f"pyro-vae: nothing to do: {out} is already trained to epoch 1 (--epochs 1); pass a larger --epochs to "
        f"train on (pyro-vae plot {out} rewrites its figures)"
    )
    from pyro_vae.training import train as train_api

    result = train_api(load_run(out, with_data=False).config, out, resume=True, progress=False)
    assert result.figures == [] and len(result.metrics) == 1
    assert snapshot(out) == before


def test_derived_files_are_removed_when_a_resume_changes_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    train(capsys, out, 1)
    assert cli(capsys, "evaluate", out, "--num-samples", 10, "--sbc", 20)[0] == 0
    compare = ["--estimators", "meanfield", "--draws", 2, "--examples", 4, "--ll-samples", 10, "--snr-ks", 1]
    assert cli(capsys, "compare-estimators", out, *compare, "--snr-estimators", "iwae")[0] == 0
    made = {
        evaluate.OUTPUT,
        evaluate.SBC_FIGURE,
        compare_estimators.CSV,
        compare_estimators.JSON,
        compare_estimators.PLOT,
    }
    figures = {p.name for p in out.glob("*.png")} - made
    assert made | figures <= set(DERIVED_FILES) and made <= {p.name for p in out.iterdir()}
    old_figures = {name: (out / name).read_bytes() for name in figures}
    assert resume(capsys, out, 2)[0] == 0
    present = {p.name for p in out.iterdir()}
    assert not made & present  # made from epoch 1: gone
    assert figures <= present and (out / "curves.png").read_bytes() != old_figures["curves.png"]  # rewritten
    assert json.loads((out / "config.json").read_text())["epochs"] == 2


def test_kl_ablation_refuses_existing_runs_and_resumes_or_overwrites_them(tmp_path, capsys):
    small = ["--epochs", 2, "--hidden", 8, "--no-progress"]
    out, fresh = tmp_path / "ablation", tmp_path / "fresh"
    assert cli(capsys, "kl-ablation", "--out", out, *small)[0] == 0
    two = (out / "summary.json").read_text()
    before = {name: snapshot(out / name) for name in ("with_kl", "without_kl")}
    code, err = cli(capsys, "kl-ablation", "--out", out, *small)
    one_line_error(
        code,
        err,
        f"{out} already holds the experiment's runs (with_kl, without_kl); pass --resume to continue them, "
        "--overwrite to replace them, or choose another --out",
    )
    assert {name: snapshot(out / name) for name in before} == before

    assert cli(capsys, "kl-ablation", "--out", out, "--resume", "--epochs", 3, "--no-progress")[0] == 0
    assert cli(capsys, "kl-ablation", "--out", fresh, *small[2:], "--epochs", 3)[0] == 0
    for name in ("with_kl", "without_kl"):
        assert (out / name / METRICS).read_text() == (fresh / name / METRICS).read_text()
    assert (out / "summary.json").read_text() == (fresh / "summary.json").read_text()

    assert cli(capsys, "kl-ablation", "--out", out, *small, "--overwrite")[0] == 0
    assert (out / "summary.json").read_text() == two
    code, err = cli(capsys, "kl-ablation", "--out", out, "--resume", "--overwrite")
    one_line_error(code, err, "give one of them")


class GrowingDecoder(torch.nn.Module):
    """A user's decoder whose code changes between training and resuming (its width is read at build time)."""

    width = 8

    def __init__(self, z_dim: int, x_dim: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(z_dim, self.width), torch.nn.Tanh(), torch.nn.Linear(self.width, x_dim)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def test_a_component_whose_code_changed_is_refused_at_resume(tmp_path, capsys, monkeypatch):
    from pyro_vae import DECODERS, register_decoder

    register_decoder("growing", lambda config: GrowingDecoder(config.z_dim, config.x_dim))
    try:
        out = tmp_path / "run"
        train(capsys, out, 1, "--decoder", "growing")
        before = snapshot(out)
        monkeypatch.setattr(GrowingDecoder, "width", 16)
        for args in (("train", "--out", out, "--resume", "--epochs", 2, "--no-progress"), ("plot", out)):
            code, err = cli(capsys, *args)
            one_line_error(
                code,
                err,
                f"the model built now does not fit the weights in {out / CHECKPOINT} (size mismatch for decoder.",
                "a component's code changed since the run was written",
            )
        assert snapshot(out) == before
    finally:
        del DECODERS["growing"]


def test_a_command_refused_for_its_input_leaves_no_directory_behind(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    code, err = cli(capsys, "train", "--out", out, "--dataset", tmp_path / "missing.npy", *TINY)
    one_line_error(code, err, "does not exist")
    assert not (tmp_path / "new").exists()  # the lock created it, and took it away again
    code, err = cli(capsys, "evaluate", tmp_path / "nowhere")
    one_line_error(code, err, f"run directory {tmp_path / 'nowhere'} does not exist")
    assert not (tmp_path / "nowhere").exists()
