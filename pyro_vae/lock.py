"""One writer per run directory: ``run_lock``, an exclusive OS lock held while a command writes into a run.

``train``, ``--resume``, ``kl-ablation``, ``plot``, ``evaluate`` and ``compare-estimators`` hold it for as long as
they may write; a second writer is refused at once with one line naming the holder's PID. Readers (``load_run``,
``load_checkpoint``) need no lock: every file a reader loads is replaced atomically, so it sees the old file or
the new one, never half of one. Under ``torch.distributed`` only the rank that writes (rank 0) takes the lock; the
other ranks only read, and so take none.

The lock is ``fcntl.flock`` on ``DIR/.lock``: the kernel drops it when its process ends in any way (SIGKILL
included), so a dead writer never leaves a stale lock behind. The file records the holder (PID, host, command)
for the message, and is deleted by its holder on release; an acquirer checks that the file it locked is still the
one at that path (else the previous holder deleted it meanwhile, and it tries again). On NFS, Linux maps flock to
NFS byte-range locks, which hold across hosts; hence the host in the record. Written on ``fcntl`` rather than on
the ``filelock`` package, which does not record who holds a lock.

While it holds the lock, the holder removes temporary files that dead writers left behind (``.NAME.PID.tmp``:
a SIGKILL during an atomic write), since no other writer can be at work.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from pyro_vae.errors import UserError
from pyro_vae.ranks import is_writer

LOCK = ".lock"
#: Fix for an unwritable new run directory (``--out``), and for an existing one a command writes results into.
NEW_RUN_FIX = "choose an --out you can write to"
EXISTING_RUN_FIX = "make it writable (this command writes its results there)"
_TEMPORARY = re.compile(r"\..+\.(\d+)\.tmp")
#: Directories this process holds, with how many nested ``run_lock``s hold each.
_HELD: dict[Path, int] = {}


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


def remove_dead_temporaries(out: Path) -> None:
    """Remove the temporary files of writers other than this process (only the lock's holder may call it)."""
    for path in out.iterdir():
        found = _TEMPORARY.fullmatch(path.name)
        if found and int(found.group(1)) != os.getpid():
            with contextlib.suppress(OSError):
                path.unlink()


@contextlib.contextmanager
def run_lock(out_dir: str | Path, what: str, *, create: bool = True, fix: str | None = None) -> Iterator[Path]:
    """Hold the exclusive lock on the run directory ``out_dir`` while the block runs; yield the directory.

    Args:
        out_dir: the run directory; created (with its parents) when ``create``, and removed again on release
            if it was created here and is still empty (a command refused for its input leaves no trace).
        what: the holder's command, recorded for the message another writer gets ("pyro-vae train").
        create: when False, a missing ``out_dir`` is the one-line error "run directory ... does not exist".
        fix: the advice if ``out_dir`` cannot be written to (default: ``NEW_RUN_FIX`` when ``create``, else
            ``EXISTING_RUN_FIX``).

    Raises ``UserError`` (one line) if another process holds the lock, naming its PID, host and command, or if
    the directory cannot be written to. Nested ``run_lock``s of one process on one directory share the lock.
    """
    out = Path(out_dir)
    fix = fix or (NEW_RUN_FIX if create else EXISTING_RUN_FIX)
    if not create and not out.is_dir():
        raise UserError(f"run directory {out} does not exist")
    if not is_writer():  # a torchrun rank other than 0: it only reads, while rank 0 holds the lock
        yield out
        return
    key = out.resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield out
        finally:
            _HELD[key] -= 1
        return
    created = _make_dir(out, fix)
    try:
        fd = _acquire(out, what, fix)
    except BaseException:
        _remove_empty(created)
        raise
    _HELD[key] = 1
    try:
        remove_dead_temporaries(out)
        yield out
    finally:
        del _HELD[key]
        _release(out, fd)
        _remove_empty(created)


def _remove_empty(created: list[Path]) -> None:
    for directory in created:
        try:
            directory.rmdir()
        except OSError:
            return  # not empty (or gone): keep it and its parents
