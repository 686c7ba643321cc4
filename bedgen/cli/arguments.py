"""argparse types built on the shared checks of bedgen.core.checks.

A check's BedgenError becomes argparse's usage error, which names the flag itself
("argument --steps: must be at least 1, got '0'") and exits with code 2; so the checks are
called with an empty field name. The library checks each value again against what the model
allows (its training steps, MAX_IMAGES, ...).
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, TypeVar

from ..core.checks import real_number, whole_number
from ..core.errors import BedgenError

T = TypeVar("T")


def checked(check: Callable[..., T], *args: Any) -> T:
    """``check(*args)``, its BedgenError turned into argparse's ArgumentTypeError."""
    try:
        return check(*args)
    except BedgenError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    return checked(whole_number, "", text, 1)


def seed(text: str) -> int:
    return checked(whole_number, "", text, 0)


def number(text: str) -> float:
    """Any finite number; the library checks its range and names the field (e.g. "t must be in (0, 1]")."""
    return checked(real_number, "", text)


def numbers(text: str) -> list[float]:
    """Comma-separated numbers, e.g. 0.25,0.5."""
    return [number(part) for part in text.split(",") if part.strip()]


def nonnegative_number(text: str) -> float:
    return checked(real_number, "", text, 0.0)


def whole_in(low: int, high: int) -> Callable[[str], int]:
    """A type for a whole number in [low, high]."""
    def parse(text: str) -> int:
        return checked(whole_number, "", text, low, high)
    parse.__name__ = f"whole number from {low} to {high}"
    return parse


def count(text: str) -> int:
    """A whole number of at least 0."""
    return checked(whole_number, "", text, 0)
