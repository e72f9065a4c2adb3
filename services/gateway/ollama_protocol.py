"""Ollama's /api/chat and /api/generate bodies, translated into the OpenAI bodies the gateway already parses.

/api/chat becomes a chat completion; /api/generate a chat completion of one user turn (the model's chat template
applied, as Ollama applies its template) or, with `raw`, a completion of the prompt as it is. The OpenAI parser
(services.gateway.protocol.parse_request) then applies every rule, once, for both APIs; an error it finds is
renamed to the field the Ollama client sent (options.num_predict, not max_tokens). No sockets, no aiohttp here.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from services.gateway.body_checks import bad as _bad
from services.gateway.body_checks import check_values, param_name
from services.gateway.limits import RequestLimits
from services.gateway.protocol import ParsedRequest, parse_request
from shared.errors import InvalidParameter, ModelNotFound

# Ollama option -> the OpenAI (or vLLM extra) field with the same meaning.
OPTIONS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p", "seed": "seed",
           "num_predict": "max_tokens", "stop": "stop", "repeat_penalty": "repetition_penalty",
           "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}
DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.9}  # Ollama's own, for options left out
NEUTRAL = {"mirostat": 0, "tfs_z": 1.0, "typical_p": 1.0}  # options accepted only at the value that changes nothing
CHAT_FIELDS = frozenset(("model", "messages", "stream", "options", "format", "tools", "keep_alive", "think"))
GENERATE_FIELDS = frozenset(("model", "prompt", "suffix", "system", "template", "context", "stream", "raw",
                             "format", "images", "options", "keep_alive", "think"))
MESSAGE_FIELDS = frozenset(("role", "content", "images", "tool_calls", "tool_name", "tool_call_id", "thinking"))
# the OpenAI field an error names -> the Ollama field it came from
RENAMED = {**{v: f"options.{k}" for k, v in OPTIONS.items()}, "response_format": "format"}
_DURATION = re.compile(r"-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+|-?\d+")


@dataclass(slots=True)
class OllamaRequest:
    model: str  # the served name the request resolved to
    parsed: ParsedRequest | None  # None: nothing to generate (Ollama's "load the model" call)
    num_ctx: int | None = None


def resolve_model(requested, served: list[str]) -> str:
    """Ollama names carry a tag; `name` and `name:latest` are the same model."""
    if not isinstance(requested, str) or not requested:
        _bad("model", "is required")
    name = requested.removesuffix(":latest")
    if name not in served:
        raise ModelNotFound(requested)
    return name


def _options(body: dict) -> tuple[dict, int | None]:
    """options -> OpenAI fields (Ollama's defaults filled in), and num_ctx."""
    options = body.get("options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        _bad("options", "must be an object")
    out = dict(DEFAULTS)
    num_ctx = None
    for key, value in options.items():
        if value is None:
            continue
        if key in NEUTRAL:
            if value != NEUTRAL[key]:
                _bad(f"options.{param_name(key)}", f"is not supported (only {NEUTRAL[key]})")
        elif key == "num_ctx":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _bad("options.num_ctx", f"must be a positive integer, got {param_name(value)!r}")
            num_ctx = value
        elif key not in OPTIONS:
            _bad(f"options.{param_name(key)}", "is not supported")
        else:
            out[OPTIONS[key]] = value
    # Ollama's "no limit" values: -1 generates until the context ends, -2 until it is full; both are ferry's default
    if isinstance(out.get("max_tokens"), int) and out["max_tokens"] in (-1, -2):
        del out["max_tokens"]
    if isinstance(out.get("top_k"), int) and not isinstance(out["top_k"], bool) and out["top_k"] <= 0:
        out["top_k"] = -1  # 0 or less: no top-k
    if isinstance(out.get("seed"), int) and not isinstance(out["seed"], bool) and out["seed"] < 0:
        del out["seed"]  # -1: a random seed
    return out, num_ctx


def _format(fmt) -> dict | None:
    """format "json" or a JSON schema -> response_format (structured outputs)."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    _bad("format", 'must be "json" or a JSON schema object')


def _tool_calls(calls, where: str) -> list[dict]:
    """Ollama's tool calls carry arguments as an object, OpenAI's as a JSON string."""
    if not isinstance(calls, list):
        _bad(f"{where}.tool_calls", "must be an array")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            _bad(f"{where}.tool_calls", "entries must be {\"function\": {\"name\": ..., \"arguments\": {...}}}")
        args = fn.get("arguments") or {}
        out.append({"id": f"call_{j}", "type": "function",
                    "function": {"name": fn["name"], "arguments": args if isinstance(args, str) else json.dumps(args)}})
    return out


def _messages(messages) -> list[dict]:
    if not isinstance(messages, list):
        _bad("messages", "must be an array")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            _bad(where, "must be an object")
        for key, value in m.items():
            if key not in MESSAGE_FIELDS and value is not None:
                _bad(f"{where}.{param_name(key)}", "is not supported")
        if m.get("images"):
            _bad(f"{where}.images", "are not supported (ferry serves text-only models)")
        if m.get("thinking"):
            _bad(f"{where}.thinking", "is not supported (ferry's models do not think)")
        msg = {"role": m.get("role"), "content": m.get("content")}
        if m.get("tool_calls"):
            msg["tool_calls"] = _tool_calls(m["tool_calls"], where)
        if m.get("tool_name") is not None:
            msg["name"] = m["tool_name"]
        if m.get("tool_call_id") is not None:
            msg["tool_call_id"] = m["tool_call_id"]
        out.append(msg)
    return out


def _check_common(body: dict, fields: frozenset) -> None:
    for key, value in body.items():
        if key not in fields and value is not None:
            _bad(param_name(key), "is not supported")
    keep_alive = body.get("keep_alive")  # accepted: ferry keeps its model loaded for as long as it runs
    if keep_alive is not None and not (isinstance(keep_alive, (int, float)) and not isinstance(keep_alive, bool)
                                       or isinstance(keep_alive, str) and _DURATION.fullmatch(keep_alive)):
        _bad("keep_alive", 'must be a number of seconds or a duration such as "5m"')
    if body.get("think") not in (None, False):
        _bad("think", "is not supported (ferry's models do not think)")
    if not isinstance(body.get("stream", True), bool):
        _bad("stream", "must be a boolean")


def _generate_body(body: dict) -> tuple[bool, dict] | None:
    """(chat?, the OpenAI body's prompt part), or None for an empty prompt (Ollama loads the model and answers)."""
    for name, why in (("template", "ferry renders only the model's own chat template"),
                      ("context", "send the conversation with /api/chat"), ("suffix", "fill-in-the-middle is not "
                      "served"), ("images", "ferry serves text-only models")):
        if body.get(name):
            _bad(name, f"is not supported ({why})")
    prompt, system = body.get("prompt"), body.get("system")
    if prompt is not None and not isinstance(prompt, str):
        _bad("prompt", "must be a string")
    if system is not None and not isinstance(system, str):
        _bad("system", "must be a string")
    if not prompt:
        return None
    if body.get("raw"):
        if system:
            _bad("system", "cannot be used with raw (a raw prompt is sent as it is, with no template)")
        return False, {"prompt": prompt}
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return True, {"messages": messages}


def _renamed(e: InvalidParameter) -> InvalidParameter:
    name = RENAMED.get(e.param or "")
    if name is not None:
        e.message = name + e.message[len(e.param):] if e.message.startswith(e.param) else e.message
        e.param = name
        e.args = (e.message,)
    return e


def parse_ollama(body, chat_route: bool, served: list[str], limits: RequestLimits = RequestLimits()) -> OllamaRequest:
    """Validate an Ollama /api/chat (chat_route) or /api/generate body; raises InvalidParameter or ModelNotFound."""
    if not isinstance(body, dict):
        raise InvalidParameter("the request body must be a JSON object")
    check_values(body, limits.max_json_depth)
    _check_common(body, CHAT_FIELDS if chat_route else GENERATE_FIELDS)
    model = resolve_model(body.get("model"), served)
    options, num_ctx = _options(body)
    if chat_route:
        messages = body.get("messages")
        part = (True, {"messages": _messages(messages)}) if messages else None
    else:
        part = _generate_body(body)
    if part is None:
        return OllamaRequest(model, None, num_ctx)
    chat, openai = part
    openai.update(options, model=model, stream=body.get("stream", True))
    fmt = _format(body.get("format"))
    if fmt is not None:
        openai["response_format"] = fmt
    if chat_route and body.get("tools"):
        openai["tools"] = body["tools"]
    try:
        return OllamaRequest(model, parse_request(openai, chat, model, limits), num_ctx)
    except InvalidParameter as e:
        raise _renamed(e) from None
