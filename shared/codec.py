"""msgpack codec for ferry's message types: each message is an array [tag, field0, field1, ...].

Fields are appended, never reordered: a decoder accepts arrays shorter than the class (missing
trailing fields take their defaults) or longer (extra fields from a newer sender are ignored).
Nested messages travel as their own tagged arrays. Nothing but plain msgpack types is ever
decoded, so no pickle-style code execution is possible.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable

import msgpack
import numpy as np


class DecodeError(ValueError):
    """The frame is not a message we know, or has the wrong shape."""


_BY_TAG: dict[int, type] = {}
_TAG_OF: dict[type, int] = {}
_FIELDS: dict[type, list[tuple[str, Callable[[Any], Any], bool]]] = {}


def message(tag: int):
    """Class decorator: register a slotted dataclass as a wire message under a fixed tag."""

    def register(cls):
        if tag in _BY_TAG:
            raise ValueError(f"tag {tag} already used by {_BY_TAG[tag].__name__}")
        _BY_TAG[tag] = cls
        _TAG_OF[cls] = tag
        return cls

    return register


def pack_ids(ids) -> bytes:
    """Token ids (list or array) as packed little-endian int32."""
    return np.asarray(ids, dtype="<i4").tobytes()


def unpack_ids(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i4")


def pack_f32(values) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def unpack_f32(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4")


_SCALARS = frozenset((str, int, float, bool, bytes, type(None)))
_NAMES: dict[type, tuple[str, ...]] = {}  # a message class's field names, in order (dataclasses.fields is slow)


def _to_wire(value):
    cls = type(value)
    if cls in _SCALARS:
        return value
    tag = _TAG_OF.get(cls)
    if tag is not None:
        names = _NAMES.get(cls)
        if names is None:
            names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
        return [tag, *[_to_wire(getattr(value, name)) for name in names]]
    if isinstance(value, list):
        return [_to_wire(v) for v in value]
    return value


def encode(msg) -> bytes:
    if type(msg) not in _TAG_OF:
        raise TypeError(f"{type(msg).__name__} is not a registered message")
    return msgpack.packb(_to_wire(msg), use_bin_type=True)


def _checker(hint) -> Callable[[Any], Any]:
    """Build a function that validates (and for nested messages, rebuilds) one field's value."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        inner = [_checker(h) for h in options if h is not type(None)]
        allow_none = type(None) in options

        def check_union(v):
            if v is None and allow_none:
                return None
            errors = []
            for c in inner:
                try:
                    return c(v)
                except DecodeError as e:
                    errors.append(str(e))
            raise DecodeError("; ".join(errors) or "None not allowed")

        return check_union
    if hint in _TAG_OF:
        return lambda v: _from_wire(v, expect=hint)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        check_item = _checker(item)

        def check_list(v):
            if not isinstance(v, list):
                raise DecodeError(f"expected a list, got {type(v).__name__}")
            return [check_item(x) for x in v]

        return check_list
    if origin is dict or hint is dict:
        def check_dict(v):
            if not isinstance(v, dict):
                raise DecodeError(f"expected a map, got {type(v).__name__}")
            return v

        return check_dict
    if hint is float:
        def check_float(v):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise DecodeError(f"expected a number, got {type(v).__name__}")
            return float(v)

        return check_float
    if hint in (int, str, bytes, bool):
        def check_plain(v):
            if not isinstance(v, hint) or (hint is int and isinstance(v, bool)):
                raise DecodeError(f"expected {hint.__name__}, got {type(v).__name__}")
            return v

        return check_plain
    return lambda v: v  # Any


def _exact_type(hint) -> type | None:
    """The wire type a field's value passes as is, unchecked, when it has exactly that type (a str for a str or
    an optional str, ...); None: every value goes through the field's checker."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        return _exact_type(options[0]) if len(options) == 1 else None
    return hint if hint in (int, str, bytes, bool, float) else None  # type(True) is bool: never an int field's


def _fields(cls):
    spec = _FIELDS.get(cls)
    if spec is None:
        hints = typing.get_type_hints(cls)
        spec = []
        for f in dataclasses.fields(cls):
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            spec.append((f.name, _checker(hints[f.name]), has_default, _exact_type(hints[f.name])))
        _FIELDS[cls] = spec
    return spec


def _from_wire(obj, expect: type | None = None):
    if not isinstance(obj, list) or not obj or not isinstance(obj[0], int):
        raise DecodeError("a message is an array starting with an integer tag")
    cls = _BY_TAG.get(obj[0])
    if cls is None:
        raise DecodeError(f"unknown message tag {obj[0]}")
    if expect is not None and cls is not expect:
        raise DecodeError(f"expected {expect.__name__}, got {cls.__name__}")
    spec = _fields(cls)
    args = []  # positional, in field order: missing trailing fields take their defaults, extra ones are ignored
    for (name, check, _, exact), value in zip(spec, obj[1:]):
        if type(value) is exact:  # the common case, one comparison per plain field
            args.append(value)
            continue
        try:
            args.append(check(value))
        except DecodeError as e:
            raise DecodeError(f"{cls.__name__}.{name}: {e}") from None
    for name, _, has_default, _ in spec[len(args):]:
        if not has_default:
            raise DecodeError(f"{cls.__name__} is missing field {name}")
    return cls(*args)


def decode(frame: bytes, expect: type | tuple[type, ...] | None = None):
    """Decode one frame; raise DecodeError for anything that is not a well-formed message."""
    try:
        obj = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types for garbage
        raise DecodeError(f"not msgpack: {e}") from None
    msg = _from_wire(obj)
    if expect is not None and not isinstance(msg, expect):
        raise DecodeError(f"unexpected message {type(msg).__name__}")
    return msg
