"""Checkpoint files of a training run: atomic writes, safe loading, RNG states. (``pyro_vae.runs.load_run``
gets a trained model back from a run directory.)

A run directory (``pyro-vae train --out DIR``) holds:

- ``checkpoint.pt``: model and guide state, optimizer state, RNG states, the epoch, the config and the
  metrics history. Saved after every epoch, and mid-epoch when training is stopped by Ctrl-C or SIGTERM
  (then it also holds ``"partial"``: the steps done in the epoch in progress, the RNG state at that
  epoch's start, which redraws its binarisation and permutation, and its loss so far). Saved by writing
  a temporary file in the same directory, fsync, then ``os.replace`` (atomic on POSIX): a crash leaves
  either the old or the new checkpoint, never a torn one. Loaded with ``torch.load(weights_only=True)``:
  only tensors and plain Python values, never arbitrary pickled objects.
- ``config.json``: the ``TrainConfig``; ``metrics.jsonl``: one JSON record per epoch; figures (PNG).

The checkpoint is the source of truth: on resume, ``metrics.jsonl`` is rewritten from the checkpoint's
history, so the two agree after any crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_vae.errors import UserError
from pyro_vae.safe_load import safe_torch_load

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"

#: Version of the checkpoint layout; bumped when keys change meaning. Version 2 added ``"partial"``: an
#: older reader must refuse such a file rather than resume it from the wrong place. Version 3 split the guide
#: into an encoder (features) and a head (q's parameters): the last layer of a version-2 guide's MLP encoder is
#: the version-3 guide's ``head``, and ``load_checkpoint`` renames it.
FORMAT_VERSION = 3
#: Versions ``load_checkpoint`` reads and upgrades (version 1 has no mid-epoch checkpoints).
READABLE_FORMATS = (1, 2, 3)
#: The keys every checkpoint holds (``train`` writes them all).
CHECKPOINT_KEYS = ("epoch", "config", "model", "guide", "optimizer", "rng", "metrics")
#: The keys of a mid-epoch checkpoint's ``"partial"`` record.
PARTIAL_KEYS = ("step", "epoch_rng", "loss_sum")


def atomic_write_bytes(path: str | Path, write: Any) -> None:
    """Write ``path`` atomically: ``write(fileobj)`` into a temporary file beside it, fsync, ``os.replace``.

    On any exception the temporary file is removed and ``path`` is left as it was. The directory is not
    fsync'ed: after a power cut the rename may be lost, leaving the previous (complete) file, which is
    consistent because metrics.jsonl is rebuilt from the checkpoint on resume; it saves an fsync per epoch.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """``atomic_write_bytes`` for UTF-8 text."""
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace ``path`` atomically with one sorted-key JSON line per record."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line (no fsync: on resume the file is rebuilt from the checkpoint anyway)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save(state)`` to ``path`` atomically (temporary file, fsync, ``os.replace``)."""
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``; one-line ``UserError`` if missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; train a model there first (pyro-vae train --out {path.parent})")
    state = safe_torch_load(
        path, "checkpoint", "train again with --overwrite, or restore a good copy", map_location=map_location
    )
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        raise UserError(f"{path} is not a pyro-vae checkpoint (format {FORMAT_VERSION})")
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    partial = state.get("partial")
    if partial is not None:
        if not isinstance(partial, dict):
            missing.append("partial")
        else:
            missing += [f"partial.{key}" for key in PARTIAL_KEYS if key not in partial]
    if missing:
        raise UserError(f"{path} is not a complete pyro-vae checkpoint (no {', '.join(missing)})")
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
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": np_state[0],
            "keys": torch.as_tensor(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64), "gauss": py_gauss},
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
