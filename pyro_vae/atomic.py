"""Writing files so that a failure leaves them whole: atomic replacement and undone appends.

``write_bytes_atomic`` writes a temporary file beside the target, fsyncs it and renames it over the target
(``os.replace``, atomic on POSIX): a crash leaves either the old or the new file, never a torn one. Every failed
write is a one-line ``WriteError`` naming the file and the cause (no space left, read-only file system,
permission, I/O error), leaving the file as it was and no temporary file. Used for the run directory's files
(``pyro_vae.run_dir``) and for every result file a command writes.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pyro_vae.errors import UserError

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


def temporary_path(path: Path) -> Path:
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
    tmp = temporary_path(path)
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
