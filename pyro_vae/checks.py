"""``check_number``: the one check of a numeric option's value (config fields, options dataclasses, estimators).

Every numeric option is checked here so that they all refuse the same things with one message form::

    {name} must be {a finite number | an integer}[ {bound}][ ({note})], got {value!r}

where ``{bound}`` is ``> 0``, ``>= 2``, ``in (0, 1]``, ... A ``bool`` is refused wherever a number is expected
(``True`` is an ``int`` in Python, and ``--beta true`` in a config file is a mistake, not 1), and so are NaN and
+-inf (an infinite learning rate or bound is never meant). The error is ``pyro_vae.errors.UserError``, a
``ValueError``, so the options dataclasses' callers that catch ``ValueError`` still do.

This module is in the lowest layer (with ``pyro_vae.errors``) so that ``pyro_vae.models``, ``pyro_vae.guides``
and the estimators may all use it.
"""

from __future__ import annotations

import math
from typing import Literal

from pyro_vae.errors import UserError

#: How the bounds ``low`` and ``high`` are read: "[]" both inclusive, "()" both exclusive, "[)" and "(]" mixed.
Bounds = Literal["[]", "()", "[)", "(]"]


def _bound_text(low: float | None, high: float | None, bounds: str) -> str:
    """`` >= low``, `` < high``, `` in (low, high]`` ...: the bound part of the message ("" for none)."""
    # floats as %g (1e+12, not 1000000000000.0); ints in full (2**32 is 4294967296, not 4.29497e+09)
    low, high = (f"{b:g}" if isinstance(b, float) else b for b in (low, high))  # type: ignore[assignment]
    if low is not None and high is not None:
        return f" in {bounds[0]}{low}, {high}{bounds[1]}"
    if low is not None:
        return f" {'>' if bounds[0] == '(' else '>='} {low}"
    if high is not None:
        return f" {'<' if bounds[1] == ')' else '<='} {high}"
    return ""


def _within(value: float, low: float | None, high: float | None, bounds: str) -> bool:
    above = low is None or (value > low if bounds[0] == "(" else value >= low)
    below = high is None or (value < high if bounds[1] == ")" else value <= high)
    return above and below


def check_number(
    value: object,
    name: str,
    *,
    positive: bool = False,
    low: float | None = None,
    high: float | None = None,
    bounds: Bounds = "[]",
    integer: bool = False,
    note: str = "",
) -> float | int:
    """``value`` unchanged if it is a finite number (an ``int``, not a ``bool``, when ``integer``) in the interval
    from ``low`` to ``high`` (either may be None: unbounded; inclusive or exclusive as ``bounds`` says, e.g. "()"
    for :math:`(0, 1)`); ``positive`` is short for ``low=0`` exclusive, i.e. :math:`(0, \\infty)`. Otherwise a
    one-line ``UserError`` (the module doc's form), with ``note`` in parentheses after the bound.
    """
    if positive:
        if low is not None:
            raise TypeError("check_number: give positive or low, not both")
        low, bounds = 0, f"({bounds[1]}"  # type: ignore[assignment]
    kind = "an integer" if integer else "a finite number"
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int if integer else (int, float))
        # an int is always finite (and math.isfinite would overflow on one beyond a float's range)
        and (isinstance(value, int) or math.isfinite(value))  # type: ignore[arg-type]
        and _within(value, low, high, bounds)  # type: ignore[arg-type]
    )
    if not ok:
        suffix = f" ({note})" if note else ""
        raise UserError(f"{name} must be {kind}{_bound_text(low, high, bounds)}{suffix}, got {value!r}")
    return value  # type: ignore[return-value]
