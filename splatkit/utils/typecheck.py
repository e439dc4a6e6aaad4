"""Checking JSON values (presets, saved configs, ``--set``) against dataclass field types, so a
typo or a wrong type is a one-line error naming the key and where it came from."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

from splatkit.errors import SplatkitError


def coerce(name: str, hint, value: Any, source: str) -> Any:
    """``value`` checked against the type ``hint`` (paths become :class:`Path`, ints float where a
    float is wanted); anything else is a :class:`SplatkitError`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)

    def bad() -> SplatkitError:
        return SplatkitError(f"{source}: {name} = {value!r} is not a valid {getattr(hint, '__name__', hint)}")

    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise bad()
        return Path(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad()
        return value
    if origin is Literal:
        if value not in args:
            raise SplatkitError(f"{source}: {name} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad()
        return [_coerce_item(name, args[0], v, source) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise SplatkitError(f"{source}: {name} must be a JSON object, got {value!r}")
        return dict(value)  # nested sections are checked by their owner
    return value


def _coerce_item(name: str, hint, value, source: str):
    if hint is int and not (isinstance(value, int) and not isinstance(value, bool)):
        raise SplatkitError(f"{source}: {name} must be a list of integers, got item {value!r}")
    if hint is str and not isinstance(value, str):
        raise SplatkitError(f"{source}: {name} must be a list of strings, got item {value!r}")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SplatkitError(f"{source}: {name} must be a list of numbers, got item {value!r}")
        return float(value)
    return value


def coerce_dataclass_values(cls, values: dict, source: str, what: str) -> dict:
    """``values`` checked against dataclass ``cls``'s fields; unknown keys are an error."""
    import dataclasses

    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for key, value in values.items():
        k = key.replace("-", "_")
        if k not in known:
            raise SplatkitError(f"{source}: unknown {what} setting {key!r} (known: {', '.join(sorted(known))})")
        out[k] = coerce(f"{what}.{k}", hints[k], value, source)
    return out
