"""Structured-output fields of a request body (issue 15) -> the grammar its sampling must follow.

OpenAI's `response_format` (text, json_object, json_schema), vLLM's `structured_outputs` (json, regex, choice,
grammar, json_object) and the older `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar`. At most one
may be given. A spec is made canonical (a schema is re-serialized compactly, keys in their order) so that the
compiled-grammar caches hit for the same schema. The gateway checks shapes and sizes; the tokenizer worker, which has
the vocabulary and xgrammar loaded, builds the grammar (services/tokenizer/grammar_checks.py): what it cannot parse is
a 400 naming the parameter, which travels with the request (TokenizeRequest.grammar_param).
"""
from __future__ import annotations

import json

from services.gateway.body_checks import bad as _bad
from services.gateway.body_checks import param_name

STRUCTURED_FIELDS = ("response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice",
                     "guided_grammar")
_STRUCTURED_KEYS = {"json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "grammar",
                    "json_object": "json_object"}
_LEGACY = {"guided_json": "json_schema", "guided_regex": "regex", "guided_choice": "choice",
           "guided_grammar": "grammar"}
_JSON_SCHEMA_KEYS = {"name", "schema", "strict", "description"}


def canonical_schema(schema, param: str) -> str:
    """A JSON schema (an object, or a JSON string of one) as canonical text."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError:
            _bad(param, "must be a JSON schema (an object, or a string holding one)")
    if isinstance(schema, bool):  # true/false are schemas too, but say nothing useful here
        schema = {} if schema else None
    if not isinstance(schema, dict):
        _bad(param, "must be a JSON schema object")
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)  # key order is generation order: kept


def _spec(kind: str, value, param: str) -> str:
    if kind == "json_schema":
        return canonical_schema(value, param)
    if kind == "json_object":
        if value is not True and not isinstance(value, dict):
            _bad(param, "must be true")
        return ""
    if kind in ("regex", "grammar"):
        if not isinstance(value, str) or not value:
            _bad(param, "must be a non-empty string")
        return value
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
        _bad(param, "must be a non-empty array of non-empty strings")
    return json.dumps(value, ensure_ascii=False)


def _response_format(fmt) -> tuple[str, str, str] | None:
    if not isinstance(fmt, dict):
        _bad("response_format", "must be an object")
    kind = fmt.get("type")
    extra = set(fmt) - {"type", "json_schema"}
    if extra:
        _bad("response_format", f"has an unknown field {param_name(sorted(extra)[0])!r}")
    if kind == "text":
        return None
    if kind == "json_object":
        return "json_object", "", "response_format"
    if kind != "json_schema":
        _bad("response_format.type", f"must be text, json_object or json_schema, got {param_name(kind)!r}")
    js = fmt.get("json_schema")
    if not isinstance(js, dict):
        _bad("response_format.json_schema", "must be an object with a schema")
    unknown = set(js) - _JSON_SCHEMA_KEYS
    if unknown:
        _bad("response_format.json_schema", f"has an unknown field {param_name(sorted(unknown)[0])!r}")
    if js.get("strict") is not None and not isinstance(js.get("strict"), bool):
        _bad("response_format.json_schema.strict", "must be a boolean")
    if "schema" not in js:  # OpenAI: no schema means any JSON object
        return "json_object", "", "response_format.json_schema"
    return "json_schema", canonical_schema(js["schema"], "response_format.json_schema.schema"), \
        "response_format.json_schema.schema"


def _structured_outputs(so) -> tuple[str, str, str]:
    if not isinstance(so, dict):
        _bad("structured_outputs", "must be an object")
    given = {k: v for k, v in so.items() if v is not None and v is not False}
    for key in given:
        if key not in _STRUCTURED_KEYS:
            _bad(f"structured_outputs.{param_name(key)}", "is not supported (json, regex, choice, grammar, "
                 "json_object)")
    if len(given) != 1:
        _bad("structured_outputs", "must hold exactly one of json, regex, choice, grammar, json_object")
    key, value = next(iter(given.items()))
    kind, param = _STRUCTURED_KEYS[key], f"structured_outputs.{key}"
    return kind, _spec(kind, value, param), param


def parse_structured(body: dict, max_chars: int) -> tuple[str, str, str] | None:
    """(grammar kind, canonical spec, the parameter it came from) or None for free text. Raises InvalidParameter."""
    given = [name for name in STRUCTURED_FIELDS if body.get(name) is not None]
    if len(given) > 1:
        _bad(given[1], f"cannot be combined with {given[0]}: give one structured-output constraint")
    if not given:
        return None
    name = given[0]
    if name == "response_format":
        found = _response_format(body[name])
    elif name == "structured_outputs":
        found = _structured_outputs(body[name])
    else:
        kind = _LEGACY[name]
        found = kind, _spec(kind, body[name], name), name
    if found is not None:
        check_size(found[1], found[2], max_chars)
    return found


def check_size(spec: str, param: str, max_chars: int) -> None:
    if len(spec) > max_chars:
        _bad(param, f"may be at most {max_chars} characters, got {len(spec)}")
