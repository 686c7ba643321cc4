"""Checks of user-given numbers, shared by the library, the command line and the app.

Each returns the value in its plain Python type or raises one BedgenError line that names the
field and the allowed range. Booleans are refused everywhere: ``True`` is an int to Python but
never what someone meant by a seed or a step count.
"""

from __future__ import annotations

import math
import numbers
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import BedgenError

# Floats hold every integer exactly only below 2**53 (IEEE 754 double: 53-bit significand).
EXACT_FLOAT_LIMIT = 2**53


def whole_number(name: str, value: Any, low: int | None = None, high: int | None = None, why: str = "") -> int:
    """``value`` as an int in [low, high] (None: no bound), read exactly: never a rounded seed.

    Integers (numpy's too) are taken as they are and text is read as a decimal, so
    "9007199254740993" stays itself. A float is accepted when it is whole and below 2**53:
    above it, it may already be the rounding of another integer (2**53 + 1 arrives as 2.0**53),
    so it is refused. ``why`` is said after the range, e.g. "(the model's training steps)".
    An empty ``name`` leaves the message to start at "must be", for a caller that names the field
    itself (argparse: "argument --steps: must be at least 1").
    """
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) >= EXACT_FLOAT_LIMIT:
        raise BedgenError(_say(name, f"{value!r} is too large to be exact as a decimal number; send it as an integer"))
    number = _exact_whole(value)
    reason = f" {why}" if why else ""
    if number is None:
        raise BedgenError(_say(name, f"must be a whole number{_whole_range(low, high, 'of ')}{reason}, got {value!r}"))
    # compared before int(): "1e999999" must not become a huge int
    if (low is not None and number < low) or (high is not None and number > high):
        raise BedgenError(_say(name, f"must be{_whole_range(low, high)}{reason}, got {value!r}"))
    return int(number)


def real_number(name: str, value: Any, low: float = -math.inf, high: float = math.inf, *,
                low_open: bool = False, high_open: bool = False) -> float:
    """``value`` (a number or its text) as a finite float between ``low`` and ``high``; an open
    end excludes the bound itself."""
    bounds = _real_range(low, high, low_open, high_open)
    number = _as_float(value)
    if number is None:
        raise BedgenError(_say(name, f"must be a number{bounds}, got {value!r}"))
    above = number > low if low_open else number >= low
    below = number < high if high_open else number <= high
    if not (math.isfinite(number) and above and below):  # NaN fails every comparison
        raise BedgenError(_say(name, f"must be{bounds or ' a finite number'}, got {value!r}"))
    return number


def fraction(name: str, value: Any, low_open: bool = False) -> float:
    """A number in [0, 1], or in (0, 1] with ``low_open``."""
    return real_number(name, value, 0.0, 1.0, low_open=low_open)


def positive_number(name: str, value: Any) -> float:
    """A finite number above 0."""
    number = _as_float(value)
    if number is None or not (math.isfinite(number) and number > 0):
        raise BedgenError(_say(name, f"must be a positive number, got {value!r}"))
    return number


def optional_positive_number(name: str, value: Any) -> float | None:
    """A form field where empty (None, blank text) or 0 means "the default": None; anything else
    must be a positive number."""
    if value is None or (isinstance(value, str) and not value.strip()) or _as_float(value) == 0:
        return None
    number = _as_float(value)
    if number is None or not (math.isfinite(number) and number > 0):
        raise BedgenError(_say(name, f"must be a positive number or empty, got {value!r}"))
    return number


def _say(name: str, rest: str) -> str:
    return f"{name} {rest}" if name else rest


def _whole_range(low: int | None, high: int | None, of: str = "") -> str:
    """" between 1 and 5", " at least 1" (" of at least 1" after "a whole number"), " at most 5"."""
    if low is not None and high is not None:
        return f" between {low} and {high}"
    if low is not None:
        return f" {of}at least {low}"
    if high is not None:
        return f" {of}at most {high}"
    return ""


def _exact_whole(value: Any) -> int | Decimal | None:
    """``value`` as an exact whole number, or None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            return None
        return number if number.is_finite() and number == number.to_integral_value() else None
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        return None
    try:
        return float(value)
    except (ValueError, OverflowError):
        return None


def _real_range(low: float, high: float, low_open: bool, high_open: bool) -> str:
    """The allowed range in words: " in (0, 1]", " > 0", " >= 0", " <= 1", or "" for none."""
    if math.isfinite(low) and math.isfinite(high):
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if math.isfinite(low):
        return f" {'>' if low_open else '>='} {low:g}"
    if math.isfinite(high):
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


__all__ = ["EXACT_FLOAT_LIMIT", "fraction", "optional_positive_number", "positive_number", "real_number", "whole_number"]
