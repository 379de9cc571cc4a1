"""Loading torch files that may come from anyone: ``safe_torch_load``.

``torch.load`` unpickles, and a pickle can name any Python callable to run while loading (a
``__reduce__`` returning ``(os.system, ("...",))``). ``weights_only=True`` switches to torch's restricted
unpickler, which accepts only tensors and plain containers and refuses every other global *before*
calling it. This module adds what the command line needs on top: one-line messages that say whether a
file was refused as unsafe or is simply unreadable (empty, truncated, not a torch file), and no
``UserWarning`` from torch on stderr.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from pyro_vae.errors import UserError

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
#: Lines of torch's unpickling errors that give advice (such as "retry with weights_only=False"), not the cause.
_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def safe_torch_load(path: str | Path, what: str, fix: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; for any failure a one-line ``UserError`` naming ``what``,
    saying what is wrong, and ending with ``fix`` (what the user can do about it).

    A file holding a pickled object other than tensors and plain values is refused without running any
    of its code; the message names the object (e.g. ``posix.system``).
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 4": the file is refused or read all the same; keep stderr to one line.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = _GLOBAL.search(str(err))
        if found:
            reason = f"it holds a pickled Python object ({found.group(1)}) that could run code, so it was refused"
        else:
            reason = f"it holds pickled data that torch's safe loader refused ({_last_detail(err)})"
        raise UserError(
            f"could not read {what} {path}: {reason} (torch.load weights_only=True loads only tensors and plain "
            f"values); {fix}"
        ) from None
    except Exception as err:  # noqa: BLE001 - a torn or foreign file fails in many ways (EOFError, zip errors, ...)
        raise UserError(
            f"could not read {what} {path}: it is empty, truncated or not a torch file ({_last_detail(err)}); {fix}"
        ) from None


def _last_detail(err: BaseException) -> str:
    """The most specific line of an exception's message (torch puts advice first, the cause later)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    specific = [line for line in lines if not line.startswith(_ADVICE)]
    text = (specific or lines or [type(err).__name__])[0]
    return text if len(text) <= 200 else text[:197] + "..."
