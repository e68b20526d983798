"""Typed records in and out of JSON/msgpack maps, and JSON files read from disk: one place for each.

Every stored or sent record is a frozen dataclass. ``encode_record`` turns one into a plain map (tuples as lists,
enums as their values, nested records through their own ``to_dict``); ``decode_record`` builds one from a map by its
field annotations, so a ``from_dict`` names only what differs from the rule (a renamed key, a field decoded by hand,
a field that must be present although it has a default). Decoding coerces the way the stored formats always have
(``int("3")`` is 3, a JSON integer is a valid float) and refuses what cannot be converted with an error naming the
record, the field, the value and what to do.

``typed_field`` is the strict check for maps that arrive over the broker and may be forged: the value must already
be of the type (no coercion, and ``bool`` is not an ``int``).

``read_json_object`` reads a JSON file that must hold an object, mapping a missing file, invalid JSON and a
non-object to one error class with the file's path and the remedy.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

from medheaven.errors import ConfigurationError, MedHeavenError

R = TypeVar("R")
_MISSING = object()


def typed_field(data: Mapping[str, Any], name: str, kind: type, *, what: str, error: type[MedHeavenError]) -> Any:
    """``data[name]``, which must be a ``kind`` already (KeyError if absent: the caller words a missing field)."""
    value = data[name]
    # bool is an int subclass in Python; a msgpack true must not pass as a round number
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise error(f"{what} field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def read_json_object(path: Path, *, what: str, remedy: str, error: type[MedHeavenError]) -> dict[str, Any]:
    """The JSON object in ``path``; ``what`` names the file to the operator, ``remedy`` says what to do."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise error(f"{what} {path} does not exist: {remedy}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{what} {path} is not valid JSON ({exc}): {remedy}") from exc
    if not isinstance(data, dict):
        raise error(f"{what} {path} must hold a JSON object, not {type(data).__name__}: {remedy}")
    return data


def encode_record(record: Any) -> dict[str, Any]:
    """The plain map of a dataclass record, fields in declaration order."""
    return {f.name: _encode(getattr(record, f.name)) for f in dataclasses.fields(record)}


def _encode(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_dict = getattr(value, "to_dict", None)
        return to_dict() if callable(to_dict) else encode_record(value)
    if isinstance(value, tuple | list):
        return [_encode(item) for item in value]
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    return value


def decode_record(
    cls: type[R],
    data: Mapping[str, Any],
    *,
    what: str,
    keys: Mapping[str, str] | None = None,
    required: Collection[str] = (),
    error: type[MedHeavenError] = ConfigurationError,
    **given: Any,
) -> R:
    """Build the dataclass ``cls`` from ``data`` by its field annotations.

    ``keys`` maps a field to the key it is stored under; fields in ``given`` are taken as already decoded; a field
    absent from ``data`` takes its default, unless it is listed in ``required`` or has none.
    """
    if not isinstance(data, Mapping):
        raise error(f"{what} must be a map, got {type(data).__name__}: {_REMEDY}")
    for name in required:
        if (keys.get(name, name) if keys else name) not in data:
            raise error(f"{what} has no field {keys.get(name, name) if keys else name!r}: {_REMEDY}")
    values: dict[str, Any] = dict(given)
    for name, hint, has_default in _fields(cls):
        if name in given:
            continue
        key = keys.get(name, name) if keys else name
        raw = data.get(key, _MISSING)
        if raw is _MISSING:
            if has_default:
                continue
            raise error(f"{what} has no field {key!r}: {_REMEDY}")
        try:
            values[name] = _decode(hint, raw)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise error(
                f"{what} field {key!r} = {_short(raw)} is not a valid {_name(hint)} ({exc}): {_REMEDY}"
            ) from exc
    return cls(**values)


_REMEDY = "it was not written by this MedHeaven or is damaged; restore the original or write it again"


_FIELDS: dict[type, tuple[tuple[str, Any, bool], ...]] = {}


def _fields(cls: type) -> tuple[tuple[str, Any, bool], ...]:
    """(name, resolved annotation, has a default) per field, resolved once per class."""
    if cls in _FIELDS:
        return _FIELDS[cls]
    hints = typing.get_type_hints(cls)
    _FIELDS[cls] = tuple(
        (
            f.name,
            hints[f.name],
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING,
        )
        for f in dataclasses.fields(cls)
        if f.init
    )
    return _FIELDS[cls]


def _decode(hint: Any, raw: Any) -> Any:
    if hint is Any:
        return raw
    if hint in (int, float, str, bool):
        if isinstance(raw, dict | list):
            raise TypeError(f"a {type(raw).__name__} is not a {hint.__name__}")
        return hint(raw)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if raw is None and type(None) in args:
            return None
        (inner,) = (a for a in args if a is not type(None))
        return _decode(inner, raw)
    return _decode_compound(hint, raw)


def _decode_compound(hint: Any, raw: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Literal:
        if raw not in args:
            raise ValueError(f"expected one of {', '.join(map(repr, args))}")
        return raw
    if origin is tuple:
        if not isinstance(raw, list | tuple):
            raise TypeError(f"expected a list, got {type(raw).__name__}")
        return tuple(_decode(args[0], item) for item in raw)
    if origin is dict:
        if not isinstance(raw, Mapping):
            raise TypeError(f"expected a map, got {type(raw).__name__}")
        return {_decode(args[0], k): _decode(args[1], v) for k, v in raw.items()}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(raw)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        from_dict = getattr(hint, "from_dict", None)
        return from_dict(raw) if callable(from_dict) else decode_record(hint, raw, what=hint.__name__)
    raise TypeError(f"decode_record cannot decode a field of type {hint!r}")  # a programming error, not bad input


def _name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)


def _short(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 80 else text[:77] + "..."
