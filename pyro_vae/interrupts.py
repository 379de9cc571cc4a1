"""Deferring Ctrl-C (SIGINT) and SIGTERM to a point where training can save a consistent checkpoint.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be, e.g. inside the optimizer
step after some parameters were updated and others not. Saving the weights then would store a state
that no uninterrupted run ever had. ``DeferredInterrupts`` instead records the signal, and the training
loop asks ``requested`` between steps, saves, and stops. A second signal raises ``KeyboardInterrupt`` at
once, for a user who will not wait for the step to finish. The standard library has no such helper.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

#: The signals deferred: Ctrl-C, and the polite stop of job schedulers and ``kill``.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DeferredInterrupts:
    """Context manager: while inside, SIGINT / SIGTERM set ``signum`` instead of stopping the program.

    Outside the main thread (where Python cannot install signal handlers) it does nothing, and Ctrl-C
    keeps raising ``KeyboardInterrupt``. A signal that was ignored (``SIG_IGN``, e.g. under ``nohup``)
    stays ignored. The previous handlers are restored on exit.

    >>> with DeferredInterrupts() as stop:
    ...     for batch in batches:
    ...         step(batch)
    ...         if stop.requested:
    ...             save(); break
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a deferred signal arrived."""
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # the second signal: stop now
        self.signum = signum

    def __enter__(self) -> DeferredInterrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                previous = signal.getsignal(sig)
                if previous is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for sig, previous in self._previous.items():
            # None: a handler not installed from Python; the default is the closest we can restore.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()
