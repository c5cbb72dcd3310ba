"""Parsed JSON read into dataclasses, every value checked against its field's annotation.

Understands the annotations the file formats use: ``bool``, ``int`` (64-bit), ``float``, ``str``
(valid UTF-8), ``X | None``, ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``dict`` and
``dict[str, X]``, and nested dataclasses. Lists become tuples where a tuple is annotated.
An error names the field as a path (``targets['q'].shape``); the caller adds the file.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing

from spectra.errors import SpectraError
from spectra.limits import INT64, in_range

NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def in_words(tp) -> str:
    """What a value of annotation ``tp`` looks like, in words."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else in_words(a) for a in args)
    if origin is list or (origin is tuple and args[-1:] == (Ellipsis,)):
        return f"a list of {_plural(args[0])}"
    if origin is tuple:
        return f"a list of {len(args)} {_plural(args[0])}"
    if dataclasses.is_dataclass(tp) or tp is dict or origin is dict:
        return "an object"
    return NAMES[tp]


def _plural(tp) -> str:
    return {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(
        tp, "[" + in_words(tp) + "]"
    )


def read(value, tp, where: str):
    """``value`` as annotation ``tp``; SpectraError naming ``where`` when it is not one."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = (a for a in args if a is not type(None))
        return _or_fail(value, inner, where, tp)
    return _or_fail(value, tp, where, tp)


def _or_fail(value, tp, where: str, shown):
    converted = _convert(value, tp, where)
    if converted is _WRONG:
        got = json.dumps(value, ensure_ascii=True)
        got = got if len(got) <= 40 else got[:37] + "..."
        raise SpectraError(at(where, f"expected {in_words(shown)}, got {got}"))
    return converted


_WRONG = object()


def at(where: str, message: str) -> str:
    """``message`` about the field ``where`` ("" for the whole value)."""
    return f"{where}: {message}" if where else message


def _convert(value, tp, where: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return value if isinstance(value, bool) else _WRONG
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            return _WRONG
        return in_range(value, INT64, where or "value")
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else _WRONG
    if tp is str:
        return text(value, where) if isinstance(value, str) else _WRONG
    if origin in (list, tuple):
        if not isinstance(value, list):
            return _WRONG
        if origin is tuple and args[-1:] != (Ellipsis,):
            if len(value) != len(args):
                return _WRONG
            pairs = enumerate(zip(value, args, strict=True))
            return tuple(read(v, a, f"{where}[{i}]") for i, (v, a) in pairs)
        items = [read(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            return _WRONG
        if not args:
            return value
        return {text(k, where): read(v, args[1], f"{where}[{k!r}]") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return read_dataclass(value, tp, where) if isinstance(value, dict) else _WRONG
    raise TypeError(f"no JSON reading for annotation {tp!r}")  # a programming error


def text(value: str, where: str) -> str:
    """``value`` unchanged if it can be written as UTF-8 (JSON escapes can make lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SpectraError(at(where, f"{value!a} is not valid UTF-8 text")) from None
    return value


def read_dataclass(raw: dict, cls, where: str):
    """An instance of dataclass ``cls`` from the object ``raw``: no unknown or missing fields."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields), key=str)
    if unknown:
        raise SpectraError(at(where, f"unknown field {unknown[0]!a}"))
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = read(raw[name], hints[name], f"{where}.{name}" if where else name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpectraError(at(where, f"missing field {name!r}"))
    return cls(**values)
