"""Typed overrides of config fields by dotted name, one set of rules for the CLI's --set, sweep files and the app.

Values arrive as JSON or YAML scalars, or as plain strings from a command line; each is checked
against its field's annotation and converted (an int where a float is expected, a YAML ``1e-4``
string, a list for a tuple) or refused with a one-line error naming the field and the type.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import types
import typing
from typing import Any, Sequence

from ..core.errors import BedgenError
from .schema import BedgenConfig


def override(config: BedgenConfig, changes: dict[str, Any]) -> BedgenConfig:
    """Return a copy with dotted fields replaced, e.g. ``{"unet.layers_per_block": 2}``; values are
    checked against each field's type, then the whole config is validated."""
    new = copy.deepcopy(config)
    for dotted, value in changes.items():
        value = typed_value(dotted, value)  # first: refuses unknown fields before any attribute walk
        *parents, leaf = dotted.split(".")
        target = new
        for part in parents:
            target = getattr(target, part)
        setattr(target, leaf, value)
    new.validate()
    return new


def typed_value(dotted: str, value: Any) -> Any:
    """``value`` converted to the type of config field ``dotted``; BedgenError if it cannot be."""
    hint = field_hint(dotted)
    if hint is None:
        raise BedgenError(f"unknown config field '{dotted}'{suggest(dotted, all_fields())}")
    try:
        return coerce(value, hint)
    except TypeError as e:
        raise BedgenError(f"'{dotted}' {e}") from None


def parse_assignment(text: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` from a command line: VALUE is JSON where it parses (2, 1e-4, [1, 2], null), else text."""
    field, sep, raw = text.partition("=")
    if not sep or not field.strip() or not raw:
        raise BedgenError(f"--set expects FIELD=VALUE, got {short_repr(text)}")
    try:
        return field.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return field.strip(), raw


def short_repr(value: Any, limit: int = 80) -> str:
    """repr() cut to ``limit`` characters, so a huge value never fills an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def field_hint(dotted: str) -> Any:
    """The type annotation of a dotted config field, or None if there is no such field."""
    cls: Any = BedgenConfig
    *parents, leaf = dotted.split(".")
    for part in parents:
        hint = _hints(cls).get(part)
        if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            return None
        cls = hint
    return _hints(cls).get(leaf)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}


def all_fields(cls: type = BedgenConfig, prefix: str = "") -> list[str]:
    names = []
    for name, hint in _hints(cls).items():
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            names += all_fields(hint, f"{prefix}{name}.")
        else:
            names.append(prefix + name)
    return names


def coerce(value: Any, hint: Any) -> Any:
    """``value`` as the annotated type; TypeError says what was expected."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg)
            except TypeError as e:
                errors.append(str(e))
        raise TypeError(errors[0] if len(errors) == 1 else f"expects {_type_name(hint)}, got {short_repr(value)}")
    if origin is typing.Literal:
        if value not in args:
            raise TypeError(f"must be one of {', '.join(map(str, args))}, got {short_repr(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expects a list, got {short_repr(value)}")
        return tuple(coerce(v, args[0]) for v in value)
    return _coerce_scalar(value, hint)


def _coerce_scalar(value: Any, hint: Any) -> Any:
    if hint is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-4 (no dot) as a string
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is bool or hint is str:
        if isinstance(value, hint):
            return value
    else:
        return value
    raise TypeError(f"expects {_type_name(hint)}, got {short_repr(value)}")


def _type_name(hint: Any) -> str:
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}
    if hint in names:
        return names[hint]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return " or ".join(_type_name(a) for a in args) if args else str(hint)
