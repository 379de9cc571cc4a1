"""Progress bars for long evaluations: tqdm on stderr, with the time left, and absent where stderr is no terminal."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(total: int, desc: str, enabled: bool = False, unit: str = "it") -> tqdm:
    """A tqdm bar with ``total`` steps showing the elapsed time, the estimated time left and the rate.

    ``enabled=False`` (``--no-progress``) never shows it; ``enabled=True`` shows it only when stderr is a
    terminal (tqdm's ``disable=None``), so logs and pipes stay clean.
    """
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        file=sys.stderr,
        disable=None if enabled else True,
        leave=False,
        dynamic_ncols=True,
    )
