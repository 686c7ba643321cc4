"""The shared checks of user-given numbers (bedgen.core.checks)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bedgen.core.checks import fraction, optional_positive_number, positive_number, real_number, whole_number
from bedgen.core.errors import BedgenError

SEED_MAX = 2**63 - 1


@pytest.mark.parametrize("value, expected", [
    (3, 3), (2.0, 2), ("7", 7), (" 7 ", 7), ("2.0", 2), (np.int64(5), 5),
    (SEED_MAX, SEED_MAX), (str(SEED_MAX), SEED_MAX), ("9007199254740993", 2**53 + 1), (2**53 + 1, 2**53 + 1),
])
def test_whole_numbers_are_read_exactly(value, expected):
    got = whole_number("seed", value, 0, SEED_MAX)
    assert got == expected and type(got) is int


@pytest.mark.parametrize("value", [True, False, 2.5, "2.5", "abc", "", None, [1], math.nan, math.inf, "nan", "inf"])
def test_what_is_not_a_whole_number_is_refused_by_name_and_range(value):
    with pytest.raises(BedgenError, match=r"^seed must be a whole number between 0 and 10, got "):
        whole_number("seed", value, 0, 10)


@pytest.mark.parametrize("value", [2.0**53, 9007199254740993.0, -(2.0**60)])
def test_floats_too_large_to_be_exact_are_refused(value):
    with pytest.raises(BedgenError, match="seed .* is too large to be exact"):
        whole_number("seed", value, -SEED_MAX, SEED_MAX)


@pytest.mark.parametrize("value", [-1, 11, 2**63, "1e999999", "-1"])
def test_bounds_are_inclusive_and_checked(value):
    assert whole_number("steps", 0, 0, 10) == 0 and whole_number("steps", 10, 0, 10) == 10
    with pytest.raises(BedgenError, match=r"^steps must be between 0 and 10, got "):
        whole_number("steps", value, 0, 10)


def test_open_ended_ranges_and_the_reason_are_said():
    assert whole_number("n", 10**30, 1) == 10**30
    with pytest.raises(BedgenError, match=r"^n must be at least 1, got 0$"):
        whole_number("n", 0, 1)
    with pytest.raises(BedgenError, match=r"^n must be a whole number of at least 1, got 'x'$"):
        whole_number("n", "x", 1)
    with pytest.raises(BedgenError, match=r"^n must be at most 3, got 4$"):
        whole_number("n", 4, high=3)
    with pytest.raises(BedgenError, match=r"^steps must be between 1 and 5 \(the model's training steps\), got 6$"):
        whole_number("steps", 6, 1, 5, why="(the model's training steps)")


def test_an_empty_name_leaves_the_field_to_the_caller():
    with pytest.raises(BedgenError, match=r"^must be at least 1, got '0'$"):
        whole_number("", "0", 1)


@pytest.mark.parametrize("value, expected", [(0, 0.0), (1, 1.0), (0.25, 0.25), ("0.5", 0.5), (np.float32(0.5), 0.5)])
def test_fractions(value, expected):
    assert fraction("λ", value) == expected


@pytest.mark.parametrize("value, message", [
    (1.5, r"^t must be in \(0, 1\], got 1.5$"), (0, r"^t must be in \(0, 1\], got 0$"),
    (math.nan, r"^t must be in \(0, 1\], got nan$"), (-math.inf, r"must be in \(0, 1\]"),
    ("half", r"^t must be a number in \(0, 1\], got 'half'$"), (True, r"^t must be a number in"),
    (None, r"^t must be a number in"),
])
def test_bad_fractions_are_refused(value, message):
    with pytest.raises(BedgenError, match=message):
        fraction("t", value, low_open=True)


def test_real_numbers_with_open_and_closed_ends():
    assert real_number("lr", "1e-4", 0, 1, low_open=True, high_open=True) == 1e-4
    with pytest.raises(BedgenError, match=r"^learning rate must be in \(0, 1\), got 1$"):
        real_number("learning rate", 1, 0, 1, low_open=True, high_open=True)
    with pytest.raises(BedgenError, match=r"^w must be >= 0, got -1$"):
        real_number("w", -1, 0)
    with pytest.raises(BedgenError, match=r"^w must be >= 0, got inf$"):
        real_number("w", math.inf, 0)
    with pytest.raises(BedgenError, match=r"^x must be a finite number, got nan$"):
        real_number("x", math.nan)


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, True, "big", None])
def test_positive_numbers(value):
    assert positive_number("step size", 0.1) == 0.1 and positive_number("step size", "2") == 2.0
    with pytest.raises(BedgenError, match=r"^step size must be a positive number, got "):
        positive_number("step size", value)


def test_optional_positive_numbers_treat_empty_and_zero_as_not_given():
    assert [optional_positive_number("s", v) for v in (None, "", "  ", 0, "0", 0.0)] == [None] * 6
    assert optional_positive_number("s", "0.5") == 0.5
    for bad in (-1, "big", math.inf, True):
        with pytest.raises(BedgenError, match=r"^s must be a positive number or empty, got "):
            optional_positive_number("s", bad)
