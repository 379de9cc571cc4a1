"""The run directory of a training run, in one place: its lock, its files, the checkpoint format, the checks made
before a run is resumed or loaded, and the position a checkpoint holds.

A run directory (``pyro-vae train --out DIR``) holds:

- ``checkpoint.pt``: model and guide state, optimizer state, RNG states, the epoch, the config and the metrics
  history; the source of truth. Saved by the clock and after the last epoch, and mid-epoch when training is
  stopped by Ctrl-C or SIGTERM (then it also holds ``"partial"``: the steps done in the epoch in progress, the RNG
  state at that epoch's start, which redraws its binarisation and permutation, and its loss so far). Written
  atomically (``pyro_vae.atomic``): a crash leaves the old or the new checkpoint, never a torn one. It carries the
  SHA-256 of its contents (``content_digest``) and of the data trained on, and is loaded with
  ``torch.load(weights_only=True)`` (only tensors and plain values; ``pyro_vae.safe_load``), then checked against
  its digest.
- ``checkpoint.previous.pt``: the checkpoint before the last one (a hard link), offered when that one is damaged.
- ``config.json``: the ``TrainConfig``; ``metrics.jsonl``: one JSON record per epoch, rebuilt from the checkpoint's
  history on resume, so the two agree after any crash; figures (PNG); ``.lock`` while a command writes.

``RunDir.lock`` is the one way to write: an exclusive ``fcntl.flock`` on ``DIR/.lock``, taken once per command by
the outermost caller and handed down (``train(config, run)``, ``Trainer(config, run)``). A second writer is
refused at once with one line naming the holder's PID, host and command; the kernel drops the lock when its
process ends in any way (SIGKILL included), so a dead writer never leaves a stale lock. Readers (``load_run``,
``load_checkpoint``) need none: every file a reader loads is replaced atomically. Under ``torch.distributed``
only rank 0 locks and writes (``RunDir.writes``); the other ranks read.

What is loaded is checked against what was written: the checkpoint's digest, its config against ``config.json``,
the data against the digest of the data trained on, the weights against the model built now, and, on resume,
``metrics.jsonl`` against the checkpoint's history. Each mismatch is one line naming it. A failed write is one line
saying what is kept (``RunDir.failure_message``): the last good checkpoint and metrics stay.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import random
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from pyro_vae.atomic import WriteError, append_jsonl, atomic_write_text, temporary_path, write_bytes_atomic, write_jsonl
from pyro_vae.bundle import is_bundle, read_bundle
from pyro_vae.config import TrainConfig, absolute_paths
from pyro_vae.data import VAEData
from pyro_vae.errors import UserError
from pyro_vae.models import VAEModel
from pyro_vae.pairs import as_pair, check_pair_run, discover_parameters
from pyro_vae.plugins import require_plugins
from pyro_vae.ranks import is_writer
from pyro_vae.registry import build
from pyro_vae.safe_load import safe_torch_load
from pyro_vae.score_history import remove_scores


def read_config(text: str) -> TrainConfig:
    """The ``TrainConfig`` in ``text`` (``config.json`` or a checkpoint's), after importing the plugins it records
    (``pyro_vae.plugins.require_plugins``, trusted ones only): reading a config never imports code by itself, the
    run directory's readers do it here, once, before the names are looked up."""
    require_plugins(TrainConfig.recorded_plugins(text))
    return TrainConfig.from_json(text)


CHECKPOINT = "checkpoint.pt"
#: The checkpoint saved before the last one (a hard link to it), offered when ``checkpoint.pt`` is damaged.
PREVIOUS = "checkpoint.previous.pt"
#: The checkpoint of the epoch with the best validation ELBO (``TrainConfig.validation``): same format, written
#: atomically each time the validation ELBO improves; ``load_run(DIR, which="best")`` loads it.
BEST = "best.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
LOCK = ".lock"

#: Version of the checkpoint layout; bumped when keys change meaning. Version 2 added ``"partial"``: an
#: older reader must refuse such a file rather than resume it from the wrong place. Version 3 split the guide
#: into an encoder (features) and a head (q's parameters): the last layer of a version-2 guide's MLP encoder is
#: the version-3 guide's ``head``, and ``load_checkpoint`` renames it. Version 4 added ``"digest"`` (the SHA-256
#: of the contents, checked on load) and ``"data_digest"`` (of the data set trained on). Version 5 added
#: ``"scheduler"``: the learning-rate scheduler's state (None for a constant rate); an older checkpoint is read with
#: ``"scheduler": None`` (its run had a constant rate).
FORMAT_VERSION = 5
#: Versions ``load_checkpoint`` reads and upgrades (version 1 has no mid-epoch checkpoints; before version 4
#: there is no digest to check).
READABLE_FORMATS = (1, 2, 3, 4, 5)
#: The keys every checkpoint holds (``train`` writes them all); version 4 adds ``DIGEST_KEYS``.
CHECKPOINT_KEYS = ("epoch", "config", "model", "guide", "optimizer", "rng", "metrics")
DIGEST_KEYS = ("digest", "data_digest")
#: The keys version 5 adds.
SCHEDULER_KEYS = ("scheduler",)
#: The keys of a mid-epoch checkpoint's ``"partial"`` record.
PARTIAL_KEYS = ("step", "epoch_rng", "loss_sum")

#: Options that may differ between a checkpoint's config and the config given to ``train(resume=True)``.
RESUMABLE_CHANGES = ("epochs", "device", "data_dir", "download", "threads", "checkpoint_seconds", "eval_every")
#: Files made from a run's checkpoint by other commands and by ``train``'s end; a resume or ``--overwrite``
#: removes them before it changes the checkpoint, so none is ever left describing a checkpoint that is gone.
DERIVED_FILES = (
    "evaluation.json",  # pyro-vae evaluate
    "estimators.csv",  # pyro-vae compare-estimators
    "estimators.json",
    "snr_vs_k.png",
    "sbc_ranks.png",  # pyro-vae evaluate --sbc
    "reconstructions.png",  # pyro_vae.figures
    "samples.png",
    "curves.png",
    "latent.png",
    "manifold.png",
)
#: Where results made from ``best.pt`` (``--which best``) go, beside those of the last checkpoint rather than over
#: them: ``NAME_best.EXT`` (``result_name``) for evaluate's and compare-estimators' files, DIR/best/ for plot's figures.
BEST_FIGURES = "best"
_BEST_RESULTS = ("evaluation.json", "estimators.csv", "estimators.json", "snr_vs_k.png", "sbc_ranks.png")
_FIGURES = ("reconstructions.png", "samples.png", "curves.png", "latent.png", "manifold.png", "codes.png")


def result_name(name: str, which: str = "last") -> str:
    """The file a command writes its result ``name`` (``evaluation.json``) to for the checkpoint ``which``: ``name``
    itself for the last checkpoint, ``evaluation_best.json`` for ``best.pt``."""
    if which == "last":
        return name
    stem, dot, ext = name.rpartition(".")
    return f"{stem}_{which}{dot}{ext}" if dot else f"{name}_{which}"


DERIVED_FILES += tuple(result_name(n, "best") for n in _BEST_RESULTS)
DERIVED_FILES += tuple(f"{BEST_FIGURES}/{n}" for n in _FIGURES)
#: Fix for an unwritable new run directory (``--out``), and for an existing one a command writes results into.
NEW_RUN_FIX = "choose an --out you can write to"
EXISTING_RUN_FIX = "make it writable (this command writes its results there)"
#: What to do when a loaded file does not match the run.
_NEW_RUN = "train a new run (another --out, or --overwrite)"
#: A temporary file of an atomic write (``pyro_vae.atomic.temporary_path``): ``.NAME.PID.tmp``.
_TEMPORARY = re.compile(r"\..+\.(\d+)\.tmp")


# --- The position a checkpoint holds -------------------------------------------------------------------------------


@dataclass
class Position:
    """Where a run stands: ``epoch`` completed epochs and ``step`` steps into the next one; ``saved`` is False
    until the run (in this process) has a checkpoint on disk that holds this position."""

    epoch: int = 0
    step: int = 0
    saved: bool = False

    @classmethod
    def of(cls, state: dict[str, Any]) -> Position:
        """The position a loaded checkpoint holds."""
        partial = state.get("partial")
        return cls(int(state["epoch"]), int(partial["step"]) if partial else 0, saved=True)

    def __str__(self) -> str:
        """ "step 3 of epoch 2" (mid-epoch: epoch 2 is the one in progress), else "epoch 1" (epochs done)."""
        return f"step {self.step} of epoch {self.epoch + 1}" if self.step else f"epoch {self.epoch}"

    def kept(self, path: Path) -> str:
        """What a run stopped now leaves behind, for an error message."""
        if not self.saved:
            return "no checkpoint was written"
        return f"the checkpoint of {self} is kept in {path}"


# --- The checkpoint format -----------------------------------------------------------------------------------------


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
    tmp = temporary_path(previous)
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
    match the digest it carries (format 4); upgrade an older format to this one. A ``DamagedCheckpoint`` (one line)
    if it is missing, unreadable, incomplete or changed since it was written. The ``"digest"`` entry is removed
    from what is returned."""
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
    missing = _missing_keys(state)
    if missing:
        raise DamagedCheckpoint(f"{path} is not a complete pyro-vae checkpoint (no {', '.join(missing)})")
    if state["format"] >= 4:
        _check_digest(path, state)
    if state["format"] < 3:
        state["guide"] = _guide_head_from_encoder(state["guide"])
    if state["format"] < 5:
        state["scheduler"] = None  # runs before version 5 had a constant learning rate
    state["format"] = FORMAT_VERSION
    return state


def _missing_keys(state: dict[str, Any]) -> list[str]:
    """The keys a checkpoint of its format must hold and does not (``partial.step`` for those of ``"partial"``)."""
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if state["format"] >= 4:
        missing += [key for key in DIGEST_KEYS if key not in state]
    if state["format"] >= 5:
        missing += [key for key in SCHEDULER_KEYS if key not in state]
    partial = state.get("partial")
    if partial is None:
        return missing
    if not isinstance(partial, dict):
        return [*missing, "partial"]
    return missing + [f"partial.{key}" for key in PARTIAL_KEYS if key not in partial]


def _check_digest(path: Path, state: dict[str, Any]) -> None:
    """Remove ``state``'s recorded digest and check it against the contents."""
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


# --- The lock ------------------------------------------------------------------------------------------------------


def _unwritable(out: Path, err: OSError, fix: str) -> UserError:
    reason = err.strerror or type(err).__name__
    return UserError(f"cannot write to the run directory {out} ({reason}); {fix}")


def _make_dir(out: Path, fix: str) -> list[Path]:
    """Create ``out`` (and missing parents) and return what was created, deepest first."""
    if out.exists() and not out.is_dir():
        raise UserError(f"the run directory {out} is an existing file; choose a directory path for --out")
    created = []
    for directory in [out, *out.parents]:
        if directory.exists():
            break
        created.append(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _unwritable(out, err, fix) from None
    return created


def holder(out: str | Path) -> str | None:
    """Who holds the lock on ``out`` as its lock file records it ("PID 123 on host (pyro-vae train)"), or None."""
    try:
        text = (Path(out) / LOCK).read_text().strip()
    except OSError:
        return None
    parts = text.split(" ", 2)
    if len(parts) < 2 or not parts[0].isdigit():
        return None
    return f"PID {parts[0]} on {parts[1]}" + (f" ({parts[2]})" if len(parts) == 3 else "")


def _refusal(out: Path) -> UserError:
    # The holder writes its record just after taking the lock: give it a moment.
    for _ in range(50):
        who = holder(out)
        if who is not None:
            break
        time.sleep(0.01)
    who = who or "another process (it has not recorded its PID)"
    return UserError(
        f"the run in {out} is being written by {who}; wait for it to finish (or stop it), then run this again"
    )


def _acquire(out: Path, what: str, fix: str) -> int:
    path = out / LOCK
    for _ in range(100):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise _unwritable(out, err, fix) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refusal(out) from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current != os.fstat(fd).st_ino:  # its last holder deleted it after we opened it: try again
            os.close(fd)
            continue
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {what}\n".encode(), 0)
        except OSError as err:
            _release(out, fd)
            raise _unwritable(out, err, fix) from None
        return fd
    raise UserError(f"could not lock the run directory {out}: its lock file keeps being replaced; run this again")


def _release(out: Path, fd: int) -> None:
    # Delete while still holding it, so that no one can lock this file after us (see _acquire's inode check).
    with contextlib.suppress(OSError):
        os.unlink(out / LOCK)
    os.close(fd)


def _remove_dead_temporaries(out: Path) -> None:
    """Remove the temporary files of writers other than this process (only the lock's holder may call it: no other
    writer can be at work; a SIGKILL during an atomic write leaves one)."""
    for path in out.iterdir():
        found = _TEMPORARY.fullmatch(path.name)
        if found and int(found.group(1)) != os.getpid():
            with contextlib.suppress(OSError):
                path.unlink()


def _remove_empty(created: list[Path]) -> None:
    for directory in created:
        try:
            directory.rmdir()
        except OSError:
            return  # not empty (or gone): keep it and its parents


# --- The run directory ---------------------------------------------------------------------------------------------


class RunDir:
    """The run directory ``path``: its files, its checks, and, when it came from ``RunDir.lock``, its writes.

    ``RunDir(path)`` reads (``read_checkpoint``, the checks); ``with RunDir.lock(path, what) as run:`` also writes
    (``start``, ``restore``, ``save``, ``saved``, ``append``). ``writes`` is True only for a held lock in the process
    that writes: under ``torch.distributed`` the ranks other than 0 get a ``RunDir`` whose writes do nothing.
    """

    def __init__(self, path: str | Path, *, locked: bool = False, writes: bool = False) -> None:
        self.path = Path(path)
        self.locked = locked
        self.writes = writes
        self.checkpoint = self.path / CHECKPOINT
        self.previous = self.path / PREVIOUS
        self.best = self.path / BEST
        self.config_file = self.path / CONFIG
        self.metrics = self.path / METRICS
        self._current = True  # False while a resumed run has not yet dropped what was made from the old state
        self._checked: tuple[TrainConfig, bool, bool, dict[str, Any] | None] | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, locked={self.locked}, writes={self.writes})"

    @classmethod
    @contextlib.contextmanager
    def lock(cls, path: str | Path, what: str, *, create: bool = True, fix: str | None = None) -> Iterator[RunDir]:
        """Hold the exclusive lock on the run directory ``path`` while the block runs; yield its ``RunDir``.

        Args:
            path: the run directory; created (with its parents) when ``create``, and removed again on release
                if it was created here and is still empty (a command refused for its input leaves no trace).
            what: the holder's command, recorded for the message another writer gets ("pyro-vae train").
            create: when False, a missing ``path`` is the one-line error "run directory ... does not exist".
            fix: the advice if ``path`` cannot be written to (default: ``NEW_RUN_FIX`` when ``create``, else
                ``EXISTING_RUN_FIX``).

        Raises ``UserError`` (one line) if another process holds the lock, naming its PID, host and command, or if
        the directory cannot be written to. Take it once per command and hand the ``RunDir`` down: a second
        ``lock`` of the same directory, in this process too, is refused like any other writer.
        """
        out = Path(path)
        fix = fix or (NEW_RUN_FIX if create else EXISTING_RUN_FIX)
        if not create and not out.is_dir():
            raise UserError(f"run directory {out} does not exist")
        if not is_writer():  # a torchrun rank other than 0: it only reads, while rank 0 holds the lock
            yield cls(out, locked=True, writes=False)
            return
        created = _make_dir(out, fix)
        try:
            fd = _acquire(out, what, fix)
        except BaseException:
            _remove_empty(created)
            raise
        try:
            _remove_dead_temporaries(out)
            yield cls(out, locked=True, writes=True)
        finally:
            _release(out, fd)
            _remove_empty(created)

    # --- reading and checking ---

    def read_checkpoint(self) -> dict[str, Any]:
        """``load_checkpoint`` of ``checkpoint.pt``; if it is missing or damaged and the previous checkpoint is
        intact, the message offers that one (``pyro-vae train --resume --from-previous``)."""
        try:
            return load_checkpoint(self.checkpoint)
        except DamagedCheckpoint as err:
            try:
                previous = load_checkpoint(self.previous)
            except DamagedCheckpoint:
                raise err from None
            raise DamagedCheckpoint(
                err.what,
                f"the previous checkpoint, {self.previous} ({Position.of(previous)}), is intact: pyro-vae train "
                f"--out {self.path} --resume --from-previous goes on from it",
            ) from None

    def check_writable(self) -> None:
        """Create the directory if needed and check that files can be written in it (one-line errors)."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise UserError(f"the run directory {out} is an existing file; choose a directory path for --out")
        try:
            out.mkdir(parents=True, exist_ok=True)
            # The real test of writability (os.access says yes to root even where writing fails).
            tempfile.TemporaryFile(dir=out).close()
        except OSError as err:
            reason = err.strerror or type(err).__name__
            raise UserError(
                f"cannot write to the run directory {out} ({reason}); choose an --out you can write to"
            ) from None

    def check_run(
        self, config: TrainConfig, resume: bool, overwrite: bool, state: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Check that ``config`` may be trained here (its checkpoint continues it, or there is none, or
        ``overwrite``); return the checkpoint to resume from (``state`` if already loaded), or None. Writes nothing.

        A resume is refused when the checkpoint is damaged, when its config differs from ``config`` (beyond
        ``RESUMABLE_CHANGES``) or from ``config.json``, or when ``metrics.jsonl`` is not its history. The result is
        remembered: ``checked_state`` gives it to the inner code of the same command without checking again."""
        if not resume:
            if self.checkpoint.exists() and not overwrite:
                raise UserError(
                    f"{self.path} already holds a run ({CHECKPOINT}); pass --resume to continue it, --overwrite to "
                    "replace it, or choose another --out"
                )
            self._checked = (config, resume, overwrite, None)
            return None
        state = state if state is not None else self.read_checkpoint()
        saved = read_config(state["config"])
        self.check_config_file(saved)
        self.check_records(state)
        if config.model.x_shape is None:  # to be taken from the data: the saved run's, if the data agree
            config_now = dataclasses.replace(
                config, model=dataclasses.replace(config.model, x_shape=saved.model.x_shape)
            )
        else:
            config_now = config
        check_resume(saved, config_now, Position.of(state), self.path)
        self._checked = (config, resume, overwrite, state)
        return state

    def checked_state(
        self, config: TrainConfig, resume: bool, overwrite: bool, state: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """The checkpoint ``check_run`` returned for this very ``config`` (and ``resume``, ``overwrite``), if it was
        checked here already; else ``check_run``'s answer now."""
        checked = self._checked
        if checked is not None and checked[0] is config and checked[1:3] == (resume, overwrite):
            if state is None or state is checked[3]:
                return checked[3]
        return self.check_run(config, resume, overwrite, state)

    def check_config_file(self, saved: TrainConfig) -> None:
        """One line if ``config.json`` and the checkpoint describe different runs (beyond ``RESUMABLE_CHANGES``)."""
        path = self.config_file
        if not path.is_file():
            return
        try:
            on_disk = read_config(path.read_text())
        except (ValueError, TypeError, KeyError) as err:
            raise UserError(
                f"{path} is not a run's config ({str(err).splitlines()[0]}); restore it, or {_NEW_RUN}"
            ) from None
        diffs = [d for d in on_disk.differences(saved) if d not in RESUMABLE_CHANGES]
        if diffs:
            raise UserError(
                f"{path} and {self.checkpoint} describe different runs ({', '.join(diffs)} differ): one was replaced "
                f"after the run wrote it; restore the run's own copy, or {_NEW_RUN}"
            )

    def check_records(self, state: dict[str, Any]) -> None:
        """For ``--resume``: ``metrics.jsonl`` must be the checkpoint's history or a beginning of it (the line of
        the epoch the checkpoint was saved for may be missing after a crash); else the checkpoint is not the one
        that wrote it, and resuming would silently rewrite the run's records."""
        path = self.metrics
        if not path.is_file():
            return
        lines = path.read_text().split("\n")[:-1]  # a last line without its newline is a torn append: rebuilt
        history = json.loads(state["metrics"])
        fix = (
            f"to go on from this checkpoint deliberately, move {path} aside (--resume rebuilds it from the "
            f"checkpoint), or {_NEW_RUN}"
        )
        if len(lines) > len(history):
            raise UserError(
                f"--resume: {path} records {len(lines)} epochs but {self.checkpoint} holds {Position.of(state)}: the "
                f"checkpoint is older than the run's records (replaced after it was written?); {fix}"
            )
        for epoch, (line, record) in enumerate(zip(lines, history, strict=False), start=1):
            try:
                same = json.loads(line) == record
            except json.JSONDecodeError:
                same = False
            if not same:
                raise UserError(
                    f"--resume: epoch {epoch} in {path} differs from the record in {self.checkpoint}: the "
                    f"checkpoint is not the one that wrote these records; {fix}"
                )

    def check_data(self, state: dict[str, Any], data: VAEData) -> None:
        """One line if ``data`` are not the data the checkpoint was trained on (checkpoints before format 4 do not
        record them, and pass)."""
        then = state.get("data_digest")
        if then is None:
            return
        now = data_digest(data)
        if now != then:
            raise UserError(
                f"the data set {data.name} differs from the one the run in {self.path} was trained on (SHA-256 of "
                f"its examples and labels {now[:12]}... now, {str(then)[:12]}... then); restore those data (see "
                f"--dataset, --data-dir, --labels), or {_NEW_RUN}"
            )

    def load_weights(self, model: torch.nn.Module, guide: torch.nn.Module, state: dict[str, Any]) -> None:
        """Load the checkpoint's weights into the model and guide built now; one line if they do not fit (the
        code of a component changed since the run was written)."""
        for name, module in (("model", model), ("guide", guide)):
            try:
                module.load_state_dict(state[name])
            except (RuntimeError, KeyError, TypeError) as err:
                lines = [line.strip() for line in str(err).splitlines() if line.strip()]
                detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(err).__name__)
                raise UserError(
                    f"the {name} built now does not fit the weights in {self.checkpoint} ({detail[:200]}): a "
                    f"component's code changed since the run was written; restore that code, or {_NEW_RUN}"
                ) from None

    # --- writing (a held lock, in the process that writes; else nothing is written) ---

    def restore_previous(self) -> dict[str, Any]:
        """Go back to the previous checkpoint (``--from-previous``): it replaces ``checkpoint.pt`` and
        ``metrics.jsonl`` is rewritten from its history; return it."""
        self._require_lock()
        try:
            state = load_checkpoint(self.previous)
        except DamagedCheckpoint as err:
            raise UserError(
                f"--from-previous: {err.what}, so there is no previous checkpoint to go back to; restore a good copy "
                f"of the run, or {_NEW_RUN}"
            ) from None
        write_bytes_atomic(self.checkpoint, self.previous.read_bytes())
        write_jsonl(self.metrics, json.loads(state["metrics"]))
        return state

    def start(self, config: TrainConfig) -> None:
        """A fresh run: remove an old one (``--overwrite``), then write ``config.json`` and an empty metrics file.

        Called only once everything is checked; the old checkpoint goes first, so never a new config sits
        beside an old checkpoint (which ``--resume`` would take for this run), nor files made from it.
        """
        self._current = True
        if not self._require_lock():
            return
        self.checkpoint.unlink(missing_ok=True)
        self.previous.unlink(missing_ok=True)
        self.best.unlink(missing_ok=True)
        self.remove_derived()
        remove_scores(self.path)  # the old run's IS scores per epoch (a resume keeps them: they stay its history)
        atomic_write_text(self.config_file, config.to_json() + "\n")
        write_jsonl(self.metrics, [])

    def restore(self, history: list[dict[str, Any]]) -> None:
        """A resumed run: the checkpoint is the source of truth, so ``metrics.jsonl`` becomes its history (a line
        lost in a crash between the checkpoint and its metrics line comes back); left alone if it is that already."""
        self._current = False
        if not self._require_lock():
            return
        try:
            current = [json.loads(line) for line in self.metrics.read_text().splitlines()]
        except (OSError, ValueError):
            current = None
        if current != history:
            write_jsonl(self.metrics, history)

    def save(self, record: dict[str, Any]) -> None:
        """Save the checkpoint ``record`` (the one it replaces becomes ``checkpoint.previous.pt``). Before the first
        save of a resumed run, the files made from the old checkpoint are removed (first, so that none is ever
        stale, even if this save fails)."""
        if not self._require_lock():
            return
        if not self._current:
            self.remove_derived()
        save_checkpoint(record, self.checkpoint)

    def save_best(self, record: dict[str, Any]) -> None:
        """Save the checkpoint ``record`` of a new best validation ELBO as ``best.pt`` (atomically, with its digest,
        like ``checkpoint.pt``); a crash leaves the old best or the new one."""
        if self._require_lock():
            save_checkpoint(record, self.best, keep_previous=False)

    def saved(self, config: TrainConfig) -> None:
        """After the first save of a resumed run: ``config.json`` takes the options that changed (``--epochs``, ...).
        Written after the checkpoint, so a failed save leaves it as it was."""
        if self._current:
            return
        if self._require_lock():
            atomic_write_text(self.config_file, config.to_json() + "\n")
        self._current = True

    def append(self, record: dict[str, Any]) -> None:
        """Add the epoch's line to ``metrics.jsonl`` (after its checkpoint was saved)."""
        if self._require_lock():
            append_jsonl(self.metrics, record)

    def remove_derived(self) -> None:
        """Remove ``DERIVED_FILES`` (the lock is held and the checkpoint is about to change)."""
        for name in DERIVED_FILES:
            (self.path / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # DIR/best/ of plot --which best, once empty (not if someone added files)
            (self.path / BEST_FIGURES).rmdir()

    def failure_message(self, err: WriteError, position: Position) -> str:
        """One line for a failed write: the file and cause, what is kept, and how to go on."""
        then = "continue with --resume" if position.saved else "run it again"
        return f"could not write {err.path} ({err.reason}); {position.kept(self.checkpoint)}; {err.advice}, then {then}"

    def _require_lock(self) -> bool:
        """Whether this process writes (False on a rank other than 0); a programming error without the lock."""
        if not self.locked:
            raise RuntimeError(f"{self!r} is not locked: write through RunDir.lock(...)")
        return self.writes


def prepare_run_dir(out: str | Path) -> None:
    """``RunDir(out).check_writable()``: create ``out`` if needed and check that files can be written in it."""
    RunDir(out).check_writable()


def data_digest(data: VAEData) -> str:
    """SHA-256 of a data set's examples and labels (``content_digest``), on whatever device they are."""
    return content_digest([data.train_x, data.test_x, data.train_y, data.test_y])


def check_resume(saved: TrainConfig, given: TrainConfig, position: Position, out: Path) -> None:
    """One-line errors for a resume that would not continue the saved run (``RESUMABLE_CHANGES`` may differ)."""
    diffs = [d for d in saved.differences(given) if d not in RESUMABLE_CHANGES]
    if diffs:
        raise UserError(
            f"--resume: {', '.join(diffs)} differ(s) from the run in {out}; only "
            f"{', '.join(RESUMABLE_CHANGES)} may change when resuming; to train with the new options, {_NEW_RUN}"
        )
    if given.lr_schedule == "cosine" and given.epochs != saved.epochs:
        raise UserError(
            f"--resume: the cosine learning-rate schedule anneals over the run's {saved.epochs} epochs; "
            f"--epochs {given.epochs} would change it; to train longer, {_NEW_RUN}"
        )
    if given.kl_schedule == "cyclical" and given.epochs != saved.epochs:
        raise UserError(
            f"--resume: the cyclical KL schedule spreads its cycles over the run's {saved.epochs} epochs; "
            f"--epochs {given.epochs} would change the beta of epochs already trained; to train longer, {_NEW_RUN}"
        )
    # mid-epoch, the epoch in progress must be trained to its end
    needed = position.epoch + 1 if position.step else position.epoch
    if given.epochs < needed:
        raise UserError(f"--resume: the checkpoint is at {position}; ask for --epochs >= {needed}")


def nothing_to_do(state: dict[str, Any], config: TrainConfig) -> bool:
    """True when resuming ``state`` up to ``config.epochs`` would train nothing (it is there already)."""
    position = Position.of(state)
    return not position.step and position.epoch >= config.epochs


def resume_config(
    out_dir: str | Path, model: dict[str, Any] | None = None, train: dict[str, Any] | None = None
) -> tuple[TrainConfig, dict[str, Any]]:
    """(the stored config with the options given now applied, the checkpoint): what ``--resume`` continues.

    The checkpoint is read once; pass it on as ``train(..., state=...)``.
    """
    state = RunDir(out_dir).read_checkpoint()
    d = read_config(state["config"]).to_dict()
    d["model"].update(model or {})
    d.update(absolute_paths(train or {}))
    return TrainConfig.from_dict(d), state


# --- Results and loading -------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What ``train`` returns: the run's config, metric records (one per epoch), model, guide and data."""

    config: TrainConfig
    metrics: list[dict[str, Any]]
    model: torch.nn.Module
    guide: torch.nn.Module
    data: VAEData
    out_dir: Path
    figures: list[Path] = field(default_factory=list)


@dataclass
class Run:
    """A trained run, as ``load_run`` returns it.

    Attributes:
        config: the run's ``TrainConfig``.
        model, guide: the Pyro model and guide with the checkpoint's weights, on ``device``, in eval mode.
        data: the ``VAEData`` the run was trained on (prepared for its likelihood), or None if not loaded.
        epoch: the number of completed epochs in the checkpoint.
        metrics: the per-epoch metric records up to ``epoch``.
        out_dir: the run directory.
        step: training steps done in the next epoch (0 unless the run was stopped mid-epoch; the weights
            are then those after that step).
    """

    config: TrainConfig
    model: VAEModel
    guide: torch.nn.Module
    data: VAEData | None
    epoch: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path = Path(".")
    step: int = 0

    @property
    def position(self) -> Position:
        """The checkpoint's ``Position`` ("epoch 3", "step 5 of epoch 4")."""
        return Position(self.epoch, self.step, saved=True)


def load_run(
    out_dir: str | Path,
    device: str | torch.device = "cpu",
    with_data: bool = True,
    model: Any = None,
    guide: Any = None,
    which: str = "last",
) -> Run:
    """Load the run in ``out_dir`` (written by ``pyro-vae train --out DIR`` / ``train(config, DIR)``), or the bundle
    there (written by ``pyro-vae export``: its SHA-256 manifest is checked first, ``pyro_vae.bundle``).

    ``which="best"`` loads ``best.pt``, the checkpoint of the epoch with the best validation ELBO (a run trained
    with ``validation``), instead of the last checkpoint.

    Rebuilds the model and guide from the stored config with ``pyro_vae.build`` (first importing the plugins the
    run recorded, ``pyro_vae.plugins``), loads the checkpoint's weights, moves them to ``device`` and, when
    ``with_data``, loads the data set the run used (without downloading). Clears Pyro's global parameter store
    so that stale parameters of the same names cannot shadow the loaded ones. A run of your own model and guide
    (``train(..., model=, guide=)``) needs them again: ``load_run(DIR, model=m, guide=g)`` loads the weights
    into their Pyro parameters (``pyro_vae.pairs``).

    >>> run = load_run("runs/quickstart/with_kl")
    >>> run.model, run.guide, run.data.test_x_eval, run.config.model.z_dim
    """
    run_dir = RunDir(out_dir)
    out = run_dir.path
    if not out.is_dir():
        raise UserError(f"run directory {out} does not exist")
    state = _read_state(run_dir, which)
    config = read_config(state["config"])
    if which == "last" and "bundle" not in state:
        run_dir.check_config_file(config)
    pyro.clear_param_store()
    check_pair_run(config.plugins, model, guide, out)
    if model is None:
        model, guide = build(config.model)
    else:  # the user's own pair: run it once on a dummy batch to create its parameters, then load them
        model, guide = as_pair(model, guide)
        discover_parameters(model, guide, torch.zeros(1, *config.model.x_shape))
    run_dir.load_weights(model, guide, state)
    model.to(device).eval()
    guide.to(device).eval()
    data = None
    if with_data:
        data = config.load_data(device, download=False)
        data.match_shape(config.model.x_shape)  # before the digest, as in training (TrainConfig.with_data_shape)
        run_dir.check_data(state, data)
        # A pair of your own may have no likelihood (pyro_vae.pairs); the binarisation is the run's.
        data.prepare(getattr(model, "likelihood", model), config.binarization)
    position = Position.of(state)
    return Run(config, model, guide, data, position.epoch, json.loads(state["metrics"]), out, position.step)


def _read_state(run_dir: RunDir, which: str) -> dict[str, Any]:
    """The checkpoint ``load_run`` loads: ``checkpoint.pt`` ("last"), ``best.pt`` ("best"), or a bundle's contents
    in the same keys."""
    if which not in ("last", "best"):
        raise UserError(f"which must be last or best, got {which!r}")
    if is_bundle(run_dir.path):
        bundle = read_bundle(run_dir.path)
        info = bundle.info
        if which == "best" and info.get("checkpoint") != "best":  # a bundle holds the one checkpoint exported
            raise UserError(
                f"bundle {run_dir.path} holds the {info.get('checkpoint', 'last')} checkpoint, not best.pt "
                "(export the run with --which best, or leave --which out)"
            )
        partial = {"step": info["step"]} if info.get("step") else None
        return {
            "bundle": True,
            "config": bundle.config_text,
            "model": bundle.model,
            "guide": bundle.guide,
            "epoch": info["epoch"],
            "partial": partial,
            "metrics": json.dumps(info["metrics"]),
            "data_digest": info.get("data_digest"),
        }
    if which == "best":
        if not run_dir.best.is_file():
            raise UserError(
                f"no {BEST} in {run_dir.path}: it is written by a run trained with --validation N (the checkpoint "
                "of its best validation ELBO)"
            )
        return load_checkpoint(run_dir.best)
    return run_dir.read_checkpoint()
