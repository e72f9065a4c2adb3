"""Parsing OpenAI request bodies into ferry's types (no sockets, no aiohttp here)."""
from __future__ import annotations

from dataclasses import dataclass, field

from shared.codec import pack_ids
from shared.errors import InvalidParameter, ModelNotFound
from shared.sampling_params import MAX_LOGPROBS, SamplingParams


@dataclass(slots=True)
class ParsedRequest:
    chat: bool
    model: str
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    messages: list | None = None  # chat
    prompts: list = field(default_factory=list)  # completions: each a str or packed int32 ids
    add_generation_prompt: bool = True
    chat_template_kwargs: dict = field(default_factory=dict)
    top_logprobs: int = 0


def _bad(param: str, msg: str):
    raise InvalidParameter(f"{param} {msg}", param=param)


def _get(body: dict, name: str, kind, default=None):
    """A field of the expected JSON type; ints are accepted where numbers are, bools never are."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) and kind is not bool:
        _bad(name, f"must be {kind.__name__ if isinstance(kind, type) else 'a number'}, got a boolean")
    if kind is float:
        if not isinstance(value, (int, float)):
            _bad(name, f"must be a number, got {type(value).__name__}")
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, kind):
        _bad(name, f"must be of type {kind.__name__}, got {type(value).__name__}")
    return value


def _stop_strings(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    _bad("stop", "must be a string or an array of strings")


def _int_list(body: dict, name: str) -> list[int]:
    value = body.get(name) or []
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        _bad(name, "must be an array of integers")
    return value


def _logit_bias(body: dict) -> dict[int, float]:
    raw = body.get("logit_bias") or {}
    if not isinstance(raw, dict):
        _bad("logit_bias", "must be an object mapping token ids to biases")
    out = {}
    for k, v in raw.items():
        try:
            tok = int(k)
        except (TypeError, ValueError):
            _bad("logit_bias", f"keys must be token ids, got {k!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            _bad("logit_bias", f"values must be numbers, got {v!r}")
        out[tok] = float(v)
    return out


def parse_sampling(body: dict, chat: bool) -> tuple[SamplingParams, int]:
    """SamplingParams under their OpenAI (and vLLM extra) names; also returns top_logprobs."""
    if chat:
        max_tokens = _get(body, "max_completion_tokens", int)
        if max_tokens is None:
            max_tokens = _get(body, "max_tokens", int)  # None: up to the end of the context
        top = _get(body, "top_logprobs", int)
        if top is not None and not 0 <= top <= MAX_LOGPROBS:
            _bad("top_logprobs", f"must be between 0 and {MAX_LOGPROBS}, got {top}")
        want = _get(body, "logprobs", bool, False)
        if top and not want:
            _bad("top_logprobs", "requires logprobs to be true")
        logprobs = (top or 0) if want else None
    else:
        max_tokens = _get(body, "max_tokens", int, 16)
        logprobs = _get(body, "logprobs", int)
        top = logprobs or 0
    temperature = _get(body, "temperature", float, 1.0)
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=_get(body, "top_p", float, 1.0),
        top_k=_get(body, "top_k", int, -1),
        min_p=_get(body, "min_p", float, 0.0),
        repetition_penalty=_get(body, "repetition_penalty", float, 1.0),
        presence_penalty=_get(body, "presence_penalty", float, 0.0),
        frequency_penalty=_get(body, "frequency_penalty", float, 0.0),
        logit_bias=_logit_bias(body),
        seed=_get(body, "seed", int),
        n=_get(body, "n", int, 1),
        logprobs=logprobs,
        min_tokens=_get(body, "min_tokens", int, 0),
        ignore_eos=_get(body, "ignore_eos", bool, False),
        stop_token_ids=_int_list(body, "stop_token_ids"),
        stop=_stop_strings(body),
        include_stop_str_in_output=_get(body, "include_stop_str_in_output", bool, False),
        skip_special_tokens=_get(body, "skip_special_tokens", bool, True),
    )
    if params.top_k == 0:
        params.top_k = -1  # vLLM treats 0 as "disabled" too
    return params.validate(), top or 0


def _prompts(body: dict) -> list:
    """A string, an array of token ids, or an array of those: one entry per prompt."""
    prompt = body.get("prompt")

    def one(p):
        if isinstance(p, str):
            if not p:
                _bad("prompt", "must not be empty")
            return p
        if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            return pack_ids(p)
        _bad("prompt", "must be a string, an array of token ids, or an array of those")

    if isinstance(prompt, list) and prompt and not all(isinstance(t, int) for t in prompt):
        return [one(p) for p in prompt]
    return [one(prompt)]


def parse_request(body, chat: bool, served_name: str) -> ParsedRequest:
    """Validate an OpenAI request body; raises InvalidParameter (400) or ModelNotFound (404)."""
    if not isinstance(body, dict):
        raise InvalidParameter("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        _bad("model", "must be a string")
    if model and model != served_name:
        raise ModelNotFound(model)
    params, top = parse_sampling(body, chat)
    stream = _get(body, "stream", bool, False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        _bad("stream_options", "must be an object")
    include_usage = bool((options or {}).get("include_usage", False))
    req = ParsedRequest(chat, served_name, params, stream, include_usage, top_logprobs=top)
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            _bad("messages", "must be a non-empty array")
        if not all(isinstance(m, dict) for m in messages):
            _bad("messages", "entries must be objects")
        req.messages = messages
        req.add_generation_prompt = _get(body, "add_generation_prompt", bool, True)
        req.chat_template_kwargs = _get(body, "chat_template_kwargs", dict, {})
    else:
        if body.get("echo"):
            _bad("echo", "is not supported")
        req.prompts = _prompts(body)
    return req
