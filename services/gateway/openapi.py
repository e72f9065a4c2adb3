"""The OpenAPI 3.1 document served at /openapi.json (issue 14).

Request bodies are built from the very field sets the parsers check unknown fields against (protocol.CHAT_FIELDS,
protocol.COMPLETION_FIELDS, the vllm_routes sets), with the caps of the running gateway (RequestLimits), so the
document and the validation cannot drift: a field added to a set without a schema here is reported by
undocumented_fields() (tests/services/test_openapi.py fails on it). Every error is one shape (ErrorResponse).
"""
from __future__ import annotations

from services.gateway.limits import RequestLimits
from services.gateway.protocol import CHAT_FIELDS, COMPLETION_FIELDS
from services.gateway.vllm_routes import DETOKENIZE_FIELDS, TOKENIZE_CHAT_FIELDS, TOKENIZE_PROMPT_FIELDS
from services.tokenizer.prompts import ROLES
from shared.sampling_params import INT32_MAX, MAX_LOGPROBS, SEED_LIMIT

BOOL, STR, OBJ = {"type": "boolean"}, {"type": "string"}, {"type": "object"}


def _int(lo: int, hi: int = INT32_MAX) -> dict:
    return {"type": "integer", "minimum": lo, "maximum": hi}


def _num(lo: float | None = None, hi: float | None = None, exclusive_lo: bool = False) -> dict:
    s = {"type": "number"}
    if lo is not None:
        s["exclusiveMinimum" if exclusive_lo else "minimum"] = lo
    if hi is not None:
        s["maximum"] = hi
    return s


def _ids(max_items: int | None = None, min_items: int = 0) -> dict:
    s = {"type": "array", "items": _int(0), "minItems": min_items}
    if max_items is not None:
        s["maxItems"] = max_items
    return s


def field_schemas(lim: RequestLimits) -> dict[str, dict]:
    """Every body field of the generation routes; chat's own meaning of a shared name is in CHAT_OVERRIDES."""
    text_part = {"type": "object", "required": ["type", "text"],
                 "properties": {"type": {"const": "text"}, "text": STR}}
    message = {"type": "object", "required": ["role"],
               "properties": {"role": {"enum": list(ROLES)},
                              "content": {"anyOf": [STR, {"type": "array", "items": text_part}, {"type": "null"}]}}}
    stop_string = {"type": "string", "minLength": 1, "maxLength": lim.max_stop_string_chars}
    one_prompt = {"anyOf": [{"type": "string", "minLength": 1}, _ids(min_items=1)]}
    return {
        "model": STR, "stream": BOOL, "user": STR,
        "stream_options": {"type": "object", "properties": {"include_usage": BOOL}, "additionalProperties": False},
        "max_tokens": _int(0), "max_completion_tokens": _int(1),
        "temperature": _num(0), "top_p": _num(0, 1, exclusive_lo=True), "min_p": _num(0, 1),
        "top_k": {"type": "integer", "minimum": -1, "maximum": INT32_MAX, "description": "-1 or 0: off"},
        "repetition_penalty": _num(0, exclusive_lo=True),
        "presence_penalty": _num(-2, 2), "frequency_penalty": _num(-2, 2),
        "logit_bias": {"type": "object", "maxProperties": lim.max_logit_bias,
                       "propertyNames": {"pattern": "^[0-9]{1,10}$"}, "additionalProperties": _num(-100, 100)},
        "seed": _int(0, SEED_LIMIT - 1), "n": _int(1, lim.max_n), "best_of": _int(1, lim.max_n),
        "logprobs": _int(0, MAX_LOGPROBS), "top_logprobs": _int(0, MAX_LOGPROBS),
        "prompt_logprobs": _int(0, MAX_LOGPROBS),
        "min_tokens": _int(0), "ignore_eos": BOOL, "skip_special_tokens": BOOL, "include_stop_str_in_output": BOOL,
        "stop_token_ids": _ids(lim.max_stop_token_ids),
        "stop": {"anyOf": [stop_string, {"type": "array", "items": stop_string, "maxItems": lim.max_stop_strings}]},
        **structured_schemas(),
        "messages": {"type": "array", "items": message, "minItems": 1},
        "chat_template_kwargs": {"type": "object", "description": "plain values for the model's chat template"},
        "add_generation_prompt": BOOL, "continue_final_message": BOOL, "echo": BOOL,
        "prompt": {"anyOf": [one_prompt, {"type": "array", "items": one_prompt, "minItems": 1,
                                          "maxItems": lim.max_prompts_per_request}]},
        "suffix": {"type": "string", "maxLength": 0, "description": "not supported: empty or null only"},
        "add_special_tokens": BOOL, "return_token_strs": BOOL, "tokens": _ids(),
    }


def structured_schemas() -> dict[str, dict]:
    """Issue 15's fields (services/gateway/structured_protocol.py, services/gateway/tool_protocol.py)."""
    obj = {"type": "object"}
    json_schema = {"anyOf": [obj, STR], "description": "a JSON schema (or a JSON string of one)"}
    choices = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}
    grammar = {"type": "string", "minLength": 1}
    function = {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_.\\-]{1,64}$"}, "description": STR, "parameters": obj,
        "strict": BOOL}}
    return {
        "response_format": {"type": "object", "required": ["type"], "additionalProperties": False, "properties": {
            "type": {"enum": ["text", "json_object", "json_schema"]},
            "json_schema": {"type": "object", "additionalProperties": False, "properties": {
                "name": STR, "schema": obj, "strict": BOOL, "description": STR}}}},
        "structured_outputs": {"type": "object", "additionalProperties": False, "maxProperties": 1, "properties": {
            "json": json_schema, "regex": grammar, "choice": choices, "grammar": grammar, "json_object": BOOL}},
        "guided_json": json_schema, "guided_regex": grammar, "guided_choice": choices, "guided_grammar": grammar,
        "tools": {"type": "array", "items": {"type": "object", "required": ["type", "function"],
                                             "additionalProperties": False,
                                             "properties": {"type": {"const": "function"}, "function": function}}},
        "tool_choice": {"anyOf": [{"enum": ["none", "auto", "required"]}, {
            "type": "object", "required": ["type", "function"], "properties": {
                "type": {"const": "function"}, "function": {"type": "object", "required": ["name"],
                                                            "properties": {"name": STR}}}}]},
        "parallel_tool_calls": BOOL,
    }


CHAT_OVERRIDES = {"logprobs": BOOL}
REQUIRED = {"chat": ["messages"], "completion": ["prompt"], "tokenize_prompt": ["prompt"],
            "tokenize_chat": ["messages"], "detokenize": ["tokens"]}
BODY_FIELDS = {"chat": CHAT_FIELDS, "completion": COMPLETION_FIELDS, "tokenize_prompt": TOKENIZE_PROMPT_FIELDS,
               "tokenize_chat": TOKENIZE_CHAT_FIELDS, "detokenize": DETOKENIZE_FIELDS}


def undocumented_fields(lim: RequestLimits = RequestLimits()) -> set[str]:
    known = field_schemas(lim)
    return {f for fields in BODY_FIELDS.values() for f in fields if f not in known}


def _body_schema(name: str, lim: RequestLimits) -> dict:
    known = field_schemas(lim)
    overrides = CHAT_OVERRIDES if name in ("chat", "tokenize_chat") else {}
    props = {}
    for f in sorted(BODY_FIELDS[name]):
        schema = overrides.get(f) or known.get(f, {})
        props[f] = {"anyOf": [schema, {"type": "null"}]} if f not in REQUIRED[name] else schema
    return {"type": "object", "properties": props, "required": REQUIRED[name], "additionalProperties": False}


ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": STR, "type": STR, "param": {"type": ["string", "null"]},
                   "code": {"type": ["string", "null"]}}}}}

# (method, path, summary, request body schema names, success content types)
ROUTES = [
    ("post", "/v1/chat/completions", "Chat completion (OpenAI), streamed as SSE with stream", ["chat"], "json+sse"),
    ("post", "/v1/completions", "Text completion (OpenAI), with echo, logprobs and vLLM's extras", ["completion"],
     "json+sse"),
    ("get", "/v1/models", "The served model", [], "json"),
    ("get", "/v1/models/{model_id}", "One model by id (404 unless it is the served one)", [], "json"),
    ("post", "/tokenize", "vLLM's: a prompt's or a chat's token ids, as the engine receives them",
     ["tokenize_prompt", "tokenize_chat"], "json"),
    ("post", "/detokenize", "vLLM's: the text of token ids", ["detokenize"], "json"),
    ("get", "/tokenizer_info", "vLLM's: special tokens and chat template (lm-eval's remote tokenizer)", [], "json"),
    ("post", "/v1/embeddings", "Not available: the served model is generative (always 400)", [], "json"),
    ("get", "/health", "200 when ready, else 503 with the reason", [], "json"),
    ("get", "/metrics", "Prometheus metrics", [], "text"),
    ("get", "/version", "ferry's version", [], "json"),
    ("get", "/openapi.json", "This document", [], "json"),
]


def _operation(summary: str, bodies: list[str], kind: str, path: str) -> dict:
    content = {"application/json": {"schema": OBJ}}
    if kind == "json+sse":
        content["text/event-stream"] = {"schema": {"description": "data: lines of JSON chunks, then data: [DONE]"}}
    elif kind == "text":
        content = {"text/plain": {"schema": STR}}
    op = {"summary": summary, "responses": {
        "200": {"description": "success", "content": content},
        "default": {"description": "an OpenAI-shaped error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}}}
    if bodies:
        refs = [{"$ref": f"#/components/schemas/{b}"} for b in bodies]
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": refs[0] if len(refs) == 1 else {"anyOf": refs}}}}
    if "{model_id}" in path:
        op["parameters"] = [{"name": "model_id", "in": "path", "required": True, "schema": STR}]
    return op


def openapi_document(lim: RequestLimits, version: str) -> dict:
    paths: dict[str, dict] = {}
    for method, path, summary, bodies, kind in ROUTES:
        paths.setdefault(path, {})[method] = _operation(summary, bodies, kind, path)
    schemas = {name: _body_schema(name, lim) for name in BODY_FIELDS}
    schemas["ErrorResponse"] = ERROR
    return {"openapi": "3.1.0",
            "info": {"title": "ferry", "version": version,
                     "description": "OpenAI-compatible LLM inference server (and vLLM's extra routes)."},
            "paths": paths, "components": {"schemas": schemas,
                                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}, {}]}
