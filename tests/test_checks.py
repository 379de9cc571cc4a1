"""``pyro_vae.checks.check_number``: the contract every numeric option relies on (module doc of pyro_vae.checks)."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import pytest

from pyro_vae.checks import check_number
from pyro_vae.errors import UserError

NOT_NUMBERS = [math.nan, math.inf, -math.inf, True, False, "1", None, [1.0], Fraction(1, 2), 1j]


@pytest.mark.parametrize("value", NOT_NUMBERS, ids=repr)
def test_anything_but_a_finite_int_or_float_is_refused_with_one_line(value):
    with pytest.raises(UserError) as info:
        check_number(value, "lr")
    message = str(info.value)
    assert message == f"lr must be a finite number, got {value!r}"
    assert "\n" not in message


@pytest.mark.parametrize("value", [0, -3, 2.5, -1e300, 10**400, np.float64(0.25)], ids=repr)
def test_finite_numbers_come_back_unchanged(value):
    out = check_number(value, "x")
    assert out is value  # not converted: an int stays an int (a config's JSON round trip keeps its type)


@pytest.mark.parametrize("value", [1.0, 2.5, math.nan, True, np.int64(3), "3"], ids=repr)
def test_integer_refuses_floats_bools_and_non_python_ints(value):
    with pytest.raises(UserError, match=re.escape(f"k must be an integer >= 1, got {value!r}")):
        check_number(value, "k", integer=True, low=1)


def test_integer_accepts_ints_even_beyond_a_floats_range():
    assert check_number(3, "k", integer=True, low=1) == 3
    assert check_number(10**400, "k", integer=True) == 10**400  # math.isfinite would overflow on it


@pytest.mark.parametrize("value", [0, 0.0, -0.0, -1e-300, -5])
def test_positive_refuses_zero_and_below(value):
    with pytest.raises(UserError, match=re.escape(f"lr must be a finite number > 0, got {value!r}")):
        check_number(value, "lr", positive=True)


def test_positive_accepts_the_smallest_positive_float():
    tiny = 5e-324  # the smallest subnormal double: > 0
    assert check_number(tiny, "lr", positive=True) == tiny


@pytest.mark.parametrize(
    ("bounds", "inside", "outside", "text"),
    [
        ("[]", [0, 0.5, 1], [-1e-9, 1 + 1e-9], "in [0, 1]"),
        ("()", [1e-9, 0.5, 1 - 1e-9], [0, 1, 0.0, 1.0], "in (0, 1)"),
        ("(]", [1e-9, 1], [0, 1 + 1e-9], "in (0, 1]"),
        ("[)", [0, 1 - 1e-9], [-1e-9, 1], "in [0, 1)"),
    ],
)
def test_bounds_inclusive_and_exclusive_as_documented(bounds, inside, outside, text):
    for v in inside:
        assert check_number(v, "p", low=0, high=1, bounds=bounds) == v
    for v in outside:
        with pytest.raises(UserError, match=re.escape(f"p must be a finite number {text}, got {v!r}")):
            check_number(v, "p", low=0, high=1, bounds=bounds)


@pytest.mark.parametrize(
    ("kwargs", "good", "bad", "text"),
    [
        ({"low": 2, "integer": True}, 2, 1, "an integer >= 2"),
        ({"low": 0, "bounds": "(]"}, 1e-9, 0, "a finite number > 0"),
        ({"high": 10}, 10, 10.5, "a finite number <= 10"),
        ({"high": 10, "bounds": "[)"}, 9.99, 10, "a finite number < 10"),
        ({"low": 0, "high": 2**32, "bounds": "[)", "integer": True}, 2**32 - 1, 2**32, "an integer in [0, 4294967296)"),
        ({"low": 0.0, "high": 1e12, "bounds": "[)"}, 0.0, 1e12, "a finite number in [0, 1e+12)"),
    ],
)
def test_one_sided_bounds_and_their_message(kwargs, good, bad, text):
    assert check_number(good, "v", **kwargs) == good
    with pytest.raises(UserError, match=re.escape(f"v must be {text}, got {bad!r}")):
        check_number(bad, "v", **kwargs)


def test_the_note_follows_the_bound_in_parentheses():
    with pytest.raises(UserError) as info:
        check_number(-1.0, "clip_norm", positive=True, note="or None for no clipping")
    assert str(info.value) == "clip_norm must be a finite number > 0 (or None for no clipping), got -1.0"


def test_the_error_is_a_value_error_for_callers_that_catch_those():
    with pytest.raises(ValueError):
        check_number(-1, "n", integer=True, low=0)


def test_positive_and_low_together_is_a_programming_error():
    with pytest.raises(TypeError):
        check_number(1.0, "x", positive=True, low=0)


def test_the_migrated_places_refuse_bool_where_a_number_is_expected():
    """One real place from each layer (config, estimator options, model options): True is not 1 there."""
    from pyro_vae.models.m2 import M2Options

    from pyro_vae.config import TrainConfig
    from pyro_vae.estimators.renyi import RenyiOptions

    with pytest.raises(UserError, match="lr must be a finite number > 0, got True"):
        TrainConfig(lr=True)
    with pytest.raises(UserError, match="alpha must be a finite number, got True"):
        RenyiOptions(alpha=True)
    with pytest.raises(UserError, match=re.escape("alpha must be a finite number in [0, 1e+12) (or None: 0.1 N)")):
        M2Options(alpha=True)
