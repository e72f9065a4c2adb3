"""The request body as JSON that every later step can carry: parsed with bounded depth, every value checked.

JSON allows what msgpack and UTF-8 do not: lone surrogates ("\\ud800"), integers of any size, NaN and
Infinity (Python's json reads them), nesting as deep as the body is long. Each would fail later, in an
encoder or a tokenizer, as a 500; here it is a 400 naming the top-level field it is under.
"""
from __future__ import annotations

import json
import math

from shared.errors import InvalidParameter

INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # what msgpack carries
MAX_PARAM_CHARS = 64  # a field name quoted in an error is cut to this


def bad(param: str, msg: str):
    """The one way the parsers reject a field: an InvalidParameter (400) naming it, the message led by its name."""
    raise InvalidParameter(f"{param} {msg}", param=param)


def flag(body: dict, name: str, default: bool) -> bool:
    """An optional boolean field (null: the default)."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        bad(name, f"must be a boolean, got {type(value).__name__}")
    return value


def load_json(raw: bytes):
    """The parsed body; InvalidParameter (code invalid_json) when it is not JSON or nests past Python's stack."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise InvalidParameter("the body is nested too deeply", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidParameter(f"the body is not valid JSON: {e}", code="invalid_json") from None


def param_name(key) -> str:
    text = str(key).encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
    return text[:MAX_PARAM_CHARS]


def _check_string(s: str, param: str) -> None:
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidParameter(f"{param} contains a lone surrogate (not valid Unicode text)",
                                   param=param) from None


def check_values(body, max_depth: int) -> None:
    """Walk the whole body (no recursion): depth at most max_depth, strings valid Unicode, integers within 64
    bits, floats finite. Raises InvalidParameter naming the top-level field."""
    stack = [(v, 1, param_name(k), k) for k, v in body.items()] if isinstance(body, dict) else [(body, 0, None, "")]
    for _, _, param, key in stack:
        if isinstance(key, str):
            _check_string(key, "a field name")
    while stack:
        value, depth, param, _ = stack.pop()
        if isinstance(value, str):
            _check_string(value, param or "the body")
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if not INT_MIN <= value <= INT_MAX:
                raise InvalidParameter(f"{param} holds an integer beyond 64 bits", param=param)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidParameter(f"{param} must be a finite number, got {value}", param=param)
        elif isinstance(value, (dict, list)):
            if depth >= max_depth:
                raise InvalidParameter(f"{param} is nested deeper than {max_depth} levels", param=param)
            if isinstance(value, dict):
                for k, v in value.items():
                    if isinstance(k, str):
                        _check_string(k, param)
                    stack.append((v, depth + 1, param, k))
            else:
                stack.extend((v, depth + 1, param, None) for v in value)
