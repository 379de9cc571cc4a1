"""Checkpoint files of a training run: atomic writes, safe loading, RNG states. (``pyro_vae.runs.load_run``
gets a trained model back from a run directory.)

A run directory (``pyro-vae train --out DIR``) holds:

- ``checkpoint.pt``: model and guide state, optimizer state, RNG states, the epoch, the config and the
  metrics history. Saved after every epoch, and mid-epoch when training is stopped by Ctrl-C or SIGTERM
  (then it also holds ``"partial"``: the steps done in the epoch in progress, the RNG state at that
  epoch's start, which redraws its binarisation and permutation, and its loss so far). Saved by writing
  a temporary file in the same directory, fsync, then ``os.replace`` (atomic on POSIX): a crash leaves
  either the old or the new checkpoint, never a torn one. It carries the SHA-256 of its contents
  (``content_digest``) and of the data trained on. Loaded with ``torch.load(weights_only=True)`` (only tensors
  and plain Python values, never arbitrary pickled objects), then checked against its digest.
- ``checkpoint.previous.pt``: the checkpoint before the last one (a hard link), offered when that one is damaged.
- ``config.json``: the ``TrainConfig``; ``metrics.jsonl``: one JSON record per epoch; figures (PNG).

Every write of a run's file fails as a one-line ``WriteError`` naming the file and the cause (no space left,
read-only file system, permission, I/O error), leaving the file as it was and no temporary file.

The checkpoint is the source of truth: on resume, ``metrics.jsonl`` is rewritten from the checkpoint's
history, so the two agree after any crash.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import random
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_vae.errors import UserError
from pyro_vae.safe_load import safe_torch_load

CHECKPOINT = "checkpoint.pt"
#: The checkpoint saved before the last one (a hard link to it), offered when ``checkpoint.pt`` is damaged.
PREVIOUS = "checkpoint.previous.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"

#: Version of the checkpoint layout; bumped when keys change meaning. Version 2 added ``"partial"``: an
#: older reader must refuse such a file rather than resume it from the wrong place. Version 3 split the guide
#: into an encoder (features) and a head (q's parameters): the last layer of a version-2 guide's MLP encoder is
#: the version-3 guide's ``head``, and ``load_checkpoint`` renames it. Version 4 added ``"digest"`` (the SHA-256
#: of the contents, checked on load) and ``"data_digest"`` (of the data set trained on).
FORMAT_VERSION = 4
#: Versions ``load_checkpoint`` reads and upgrades (version 1 has no mid-epoch checkpoints; before version 4
#: there is no digest to check).
READABLE_FORMATS = (1, 2, 3, 4)
#: The keys every checkpoint holds (``train`` writes them all); version 4 adds ``DIGEST_KEYS``.
CHECKPOINT_KEYS = ("epoch", "config", "model", "guide", "optimizer", "rng", "metrics")
DIGEST_KEYS = ("digest", "data_digest")
#: The keys of a mid-epoch checkpoint's ``"partial"`` record.
PARTIAL_KEYS = ("step", "epoch_rng", "loss_sum")

#: What to do about a failed write, by errno (the rest: the disk's own error, so check it).
_WRITE_ADVICE = {
    errno.ENOSPC: "free space on its file system",
    errno.EDQUOT: "free space within your disk quota",
    errno.EROFS: "make its file system writable again",
    errno.EACCES: "make the directory writable again",
    errno.EPERM: "make the directory writable again",
}


class WriteError(UserError):
    """Writing a file of a run failed (disk full, read-only file system, permission, I/O error). The file
    named is as it was before the write (an atomic write or an append undone), and no temporary file is left.

    ``path`` is the file, ``reason`` the system's words for the cause, ``advice`` what to do about it.
    """

    def __init__(self, path: str | Path, err: OSError) -> None:
        self.path = Path(path)
        self.errno = err.errno
        self.reason = err.strerror or str(err) or type(err).__name__
        self.advice = _WRITE_ADVICE.get(err.errno, "check the disk (the system reported an error)")
        super().__init__(f"could not write {self.path} ({self.reason}); {self.advice} and run again")


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until all of ``data`` is written (a write may be partial)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _temporary(path: Path) -> Path:
    # Named after the writer's PID: whoever holds the run's lock next removes those of dead writers.
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_bytes_atomic(path: str | Path, data: bytes | memoryview) -> None:
    """Replace ``path`` with ``data`` atomically: a temporary file beside it, fsync, ``os.replace``.

    On any failure the temporary file is removed and ``path`` is left as it was; an ``OSError`` becomes a
    one-line ``WriteError`` naming ``path``. The directory is not fsync'ed: after a power cut the rename may
    be lost, leaving the previous (complete) file, which is consistent because metrics.jsonl is rebuilt from
    the checkpoint on resume; it saves an fsync per epoch.
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError):
            raise WriteError(path, err) from None
        raise


def atomic_write_bytes(path: str | Path, write: Any) -> None:
    """``write_bytes_atomic`` of what ``write(fileobj)`` writes (into memory first, so that a full disk is met
    by one ``os.write`` of ours, not in the middle of a serializer)."""
    buffer = io.BytesIO()
    write(buffer)
    write_bytes_atomic(path, buffer.getbuffer())


def atomic_write_text(path: str | Path, text: str) -> None:
    """``write_bytes_atomic`` for UTF-8 text."""
    write_bytes_atomic(path, text.encode())


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace ``path`` atomically with one sorted-key JSON line per record."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line; if the write fails (a full disk may take half a line) the file is cut back to
    its old length and a ``WriteError`` is raised. No fsync: on resume the file is rebuilt from the checkpoint."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as err:
        raise WriteError(path, err) from None
    try:
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, line)
        except BaseException:
            os.ftruncate(fd, size)  # frees blocks, so it works on a full disk
            raise
    except OSError as err:
        raise WriteError(path, err) from None
    finally:
        os.close(fd)


def content_digest(obj: Any) -> str:
    """SHA-256 of a checkpoint's contents: every tensor's dtype, shape and bytes, every plain value and key,
    in order. The same for a state and for what ``torch.load`` gives back from it, on any device.

    A hand-written walk because neither torch nor hashlib has one: the file's own bytes cannot be hashed
    inside the file, and torch's zip records carry CRC-32s that ``torch.load`` does not check.
    """
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        # a fresh tensor: contiguous() keeps the stride 0 of an expanded one-element tensor, which view() refuses
        t = torch.empty(obj.shape, dtype=obj.dtype).copy_(obj.detach())
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, list | tuple):
        h.update(f"{type(obj).__name__[0]}{len(obj)}:".encode())
        for value in obj:
            _feed(h, value)
    elif obj is None or isinstance(obj, bool | int | float | str | bytes):
        h.update(f"{type(obj).__name__}{obj!r};".encode())  # repr: exact for floats, quoted for strings
    else:
        raise TypeError(f"a checkpoint holds only tensors and plain values, not {type(obj).__name__}")


def _keep_previous(path: Path) -> None:
    """Make ``PREVIOUS`` beside ``path`` the file ``path`` is now (a hard link: no copy, no space; a copy where
    the file system has no hard links). ``path`` is never missing meanwhile."""
    if not path.is_file():
        return
    previous = path.with_name(PREVIOUS)
    tmp = _temporary(previous)
    try:
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
        os.replace(tmp, previous)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise WriteError(previous, err) from None


def save_checkpoint(state: dict[str, Any], path: str | Path, keep_previous: bool = True) -> None:
    """Write ``state`` with its ``content_digest`` to ``path`` atomically; the file it replaces becomes
    ``PREVIOUS`` (when ``keep_previous``). Serialized in memory first, so a full disk is a ``WriteError``."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({**state, "digest": content_digest(state)}, buffer)
    if keep_previous:
        _keep_previous(path)
    write_bytes_atomic(path, buffer.getbuffer())


class DamagedCheckpoint(UserError):
    """A checkpoint that is missing, unreadable, incomplete or whose contents do not match its digest.
    ``what`` says what is wrong (the message without the advice)."""

    def __init__(self, what: str, fix: str = "train again with --overwrite, or restore a good copy") -> None:
        self.what = what
        super().__init__(f"{what}; {fix}")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)`` and check it: its layout, and that its contents
    match the digest it carries (format 4). A ``DamagedCheckpoint`` (one line) if it is missing, unreadable,
    incomplete or changed since it was written. The ``"digest"`` entry is removed from what is returned."""
    path = Path(path)
    if not path.is_file():
        raise DamagedCheckpoint(
            f"no checkpoint at {path}", f"train a model there first (pyro-vae train --out {path.parent})"
        )
    try:
        state = safe_torch_load(path, "checkpoint", "", map_location=map_location)
    except UserError as err:
        raise DamagedCheckpoint(str(err).rstrip("; ")) from None
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        raise DamagedCheckpoint(f"{path} is not a pyro-vae checkpoint (format {FORMAT_VERSION})")
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if state["format"] >= 4:
        missing += [key for key in DIGEST_KEYS if key not in state]
    partial = state.get("partial")
    if partial is not None:
        if not isinstance(partial, dict):
            missing.append("partial")
        else:
            missing += [f"partial.{key}" for key in PARTIAL_KEYS if key not in partial]
    if missing:
        raise DamagedCheckpoint(f"{path} is not a complete pyro-vae checkpoint (no {', '.join(missing)})")
    if state["format"] >= 4:
        recorded = state.pop("digest")
        try:
            actual = content_digest(state)
        except TypeError as err:
            raise DamagedCheckpoint(f"checkpoint {path} holds something it should not ({err})") from None
        if actual != recorded:
            raise DamagedCheckpoint(
                f"checkpoint {path} was changed after it was written: its contents have SHA-256 {actual[:16]}..., "
                f"not the {str(recorded)[:16]}... recorded in it"
            )
    if state["format"] < 3:
        state["guide"] = _guide_head_from_encoder(state["guide"])
        state["format"] = FORMAT_VERSION
    return state


def _guide_head_from_encoder(guide_state: dict[str, Any]) -> dict[str, Any]:
    """A version-1/2 guide state (one MLP ``encoder.net`` ending in the layer that outputs mu and s) as
    version 3 has it (``encoder.net`` up to the last hidden activation, then ``head``)."""
    if not isinstance(guide_state, dict):
        return guide_state  # not a state dict: loading it into a guide fails with torch's own message
    layers = [int(k.split(".")[2]) for k in guide_state if k.startswith("encoder.net.") and k.endswith(".weight")]
    if not layers:
        return guide_state
    last = f"encoder.net.{max(layers)}."
    return {(f"head.{k[len(last) :]}" if k.startswith(last) else k): v for k, v in guide_state.items()}


def steps_into_epoch(state: dict[str, Any]) -> int:
    """Training steps done in the epoch after ``state["epoch"]`` (0 unless saved mid-epoch)."""
    partial = state.get("partial")
    return int(partial["step"]) if partial else 0


def rng_state() -> dict[str, Any]:
    """The states of every RNG training draws from: torch (CPU and CUDA), numpy, Python's ``random``.

    Pyro samples with torch's generators. Stored as tensors and plain values so that
    ``torch.load(weights_only=True)`` can read them back.
    """
    np_state = np.random.get_state(legacy=True)
    py_version, py_internal, py_gauss = random.getstate()
    return {
        **torch_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.as_tensor(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64), "gauss": py_gauss},
    }


def torch_rng_state() -> dict[str, Any]:
    """The torch part of ``rng_state`` (the CPU and CUDA generators): what the trainer keeps at each epoch's start.

    numpy's and Python's states (~0.25 ms more each time, measured in the digits training loop) are not needed
    there: the epoch's binarisation and permutation draw from torch's generators only.
    """
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states saved by ``rng_state``."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
