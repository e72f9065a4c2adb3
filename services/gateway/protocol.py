"""Parsing OpenAI request bodies into ferry's types (no sockets, no aiohttp here)."""
from __future__ import annotations

from dataclasses import dataclass, field

from services.gateway.body_checks import bad as _bad
from services.gateway.body_checks import check_values, param_name
from services.gateway.completions_protocol import (
    EXTRA_CHAT_FIELDS,
    EXTRA_COMPLETION_FIELDS,
    Extras,
    apply_extras,
    chat_echo_text,
    parse_extras,
)
from services.gateway.limits import RequestLimits
from services.gateway.structured_protocol import STRUCTURED_FIELDS
from services.gateway.tool_protocol import TOOL_FIELDS, ToolRequest, structured_request
from shared.codec import pack_ids
from shared.errors import InvalidParameter, ModelNotFound
from shared.sampling_params import INT32_MAX, MAX_LOGPROBS, SamplingParams
from shared.template_kwargs import check_template_kwargs

# Every field ferry reads; any other field with a value is a 400 naming it (nothing is silently ignored).
COMMON_FIELDS = frozenset((
    "model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "top_k", "min_p",
    "repetition_penalty", "presence_penalty", "frequency_penalty", "logit_bias", "seed", "n", "best_of",
    "logprobs", "min_tokens", "ignore_eos", "stop_token_ids", "stop", "include_stop_str_in_output",
    "skip_special_tokens", "user",  # user: OpenAI's end-user id, for the caller's own records
    *STRUCTURED_FIELDS))
CHAT_FIELDS = COMMON_FIELDS | {"messages", "max_completion_tokens", "top_logprobs", "chat_template_kwargs",
                               *TOOL_FIELDS} | EXTRA_CHAT_FIELDS
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt"} | EXTRA_COMPLETION_FIELDS


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
    extras: Extras = field(default_factory=Extras)  # issue 14: echo, prompt logprobs, best_of, chat flags
    tools: ToolRequest | None = None  # issue 15: chat tools and tool_choice (services/gateway/tool_protocol.py)
    grammar_param: str = ""  # issue 15: the parameter params' grammar came from


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
        try:
            return float(value)
        except OverflowError:
            _bad(name, "is too large")
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, kind):
        _bad(name, f"must be of type {kind.__name__}, got {type(value).__name__}")
    return value


def _stop_strings(body: dict, limits: RequestLimits) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        _bad("stop", "must be a string or an array of strings")
    if len(stop) > limits.max_stop_strings:
        _bad("stop", f"may hold at most {limits.max_stop_strings} strings, got {len(stop)}")
    for s in stop:
        if not s:
            _bad("stop", "strings must not be empty")
        if len(s) > limits.max_stop_string_chars:
            _bad("stop", f"strings may be at most {limits.max_stop_string_chars} characters, got {len(s)}")
    return stop


def _token_id(t) -> bool:
    return isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= INT32_MAX


def _int_list(body: dict, name: str, cap: int) -> list[int]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(_token_id(t) for t in value):
        _bad(name, f"must be an array of token ids (integers from 0 to {INT32_MAX})")
    if len(value) > cap:
        _bad(name, f"may hold at most {cap} token ids, got {len(value)}")
    return value


def _logit_bias(body: dict, limits: RequestLimits) -> dict[int, float]:
    raw = body.get("logit_bias")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        _bad("logit_bias", "must be an object mapping token ids to biases")
    if len(raw) > limits.max_logit_bias:
        _bad("logit_bias", f"may hold at most {limits.max_logit_bias} entries, got {len(raw)}")
    out = {}
    for k, v in raw.items():
        tok = int(k) if isinstance(k, str) and k.isascii() and k.isdigit() and len(k) <= 10 else -1
        if not 0 <= tok <= INT32_MAX:
            _bad("logit_bias", f"keys must be token ids (0 to {INT32_MAX}), got {param_name(k)!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            _bad("logit_bias", f"values must be numbers, got {param_name(v)!r}")
        out[tok] = float(v)
    return out


def parse_sampling(body: dict, chat: bool, limits: RequestLimits = RequestLimits(),
                   extras: Extras | None = None) -> tuple[SamplingParams, int]:
    """SamplingParams under their OpenAI (and vLLM extra) names; also returns top_logprobs."""
    extras = extras or parse_extras(body, chat, limits.max_n)
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
    source = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    low = extras.min_max_tokens
    if max_tokens is not None and not low <= max_tokens <= INT32_MAX:  # named as the client sent it
        _bad(source, f"must be from {low} to {INT32_MAX}, got {max_tokens}" + ("" if low else " (0: with echo)"))
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
        logit_bias=_logit_bias(body, limits),
        seed=_get(body, "seed", int),
        n=_get(body, "n", int, 1),
        logprobs=logprobs,
        min_tokens=_get(body, "min_tokens", int, 0),
        ignore_eos=_get(body, "ignore_eos", bool, False),
        stop_token_ids=_int_list(body, "stop_token_ids", limits.max_stop_token_ids),
        stop=_stop_strings(body, limits),
        include_stop_str_in_output=_get(body, "include_stop_str_in_output", bool, False),
        skip_special_tokens=_get(body, "skip_special_tokens", bool, True),
    )
    if params.top_k == 0:
        params.top_k = -1  # vLLM treats 0 as "disabled" too
    if params.n > limits.max_n:
        _bad("n", f"must be at most {limits.max_n}, got {params.n}")
    apply_extras(extras, params, chat, _get(body, "stream", bool, False))
    params.validate()
    return params, top or 0


def _prompts(body: dict, limits: RequestLimits) -> list:
    """A string, an array of token ids, or an array of those: one entry per prompt."""
    prompt = body.get("prompt")

    def one(p):
        if isinstance(p, str):
            if not p:
                _bad("prompt", "must not be empty")
            return p
        if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            if not all(0 <= t <= INT32_MAX for t in p):  # the vocabulary is checked by the tokenizer
                _bad("prompt", f"token ids must be from 0 to {INT32_MAX}")
            return pack_ids(p)
        _bad("prompt", "must be a string, an array of token ids, or an array of those")

    if isinstance(prompt, list) and prompt and not all(isinstance(t, int) for t in prompt):
        if len(prompt) > limits.max_prompts_per_request:
            _bad("prompt", f"may hold at most {limits.max_prompts_per_request} prompts, got {len(prompt)}")
        return [one(p) for p in prompt]
    return [one(prompt)]


def _check_fields(body: dict, chat: bool) -> None:
    known = CHAT_FIELDS if chat else COMPLETION_FIELDS
    for key, value in body.items():
        if key not in known and value is not None:
            _bad(param_name(key), "is not supported")


def _stream_options(body: dict) -> bool:
    """include_usage, the one stream option."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        _bad("stream_options", "must be an object")
    for key in options:
        if key != "include_usage":
            _bad("stream_options", f"{param_name(key)} is not supported")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        _bad("stream_options", "include_usage must be a boolean")
    return include


def parse_request(body, chat: bool, served_name: str, limits: RequestLimits = RequestLimits()) -> ParsedRequest:
    """Validate an OpenAI request body; raises InvalidParameter (400) or ModelNotFound (404)."""
    if not isinstance(body, dict):
        raise InvalidParameter("the request body must be a JSON object")
    check_values(body, limits.max_json_depth)
    _check_fields(body, chat)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        _bad("model", "must be a string")
    if model and model != served_name:
        raise ModelNotFound(model)
    extras = parse_extras(body, chat, limits.max_n)
    params, top = parse_sampling(body, chat, limits, extras)
    tools, grammar_param = structured_request(body, chat, params, limits.max_grammar_chars)  # sets params' grammar
    stream = _get(body, "stream", bool, False)
    include_usage = _stream_options(body)
    req = ParsedRequest(chat, served_name, params, stream, include_usage, top_logprobs=top, extras=extras,
                        tools=tools, grammar_param=grammar_param)
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            _bad("messages", "must be a non-empty array")
        if not all(isinstance(m, dict) for m in messages):
            _bad("messages", "entries must be objects")
        req.messages = messages
        if extras.echo:
            extras.echo_text = chat_echo_text(messages)
        req.add_generation_prompt = extras.add_generation_prompt
        req.chat_template_kwargs = check_template_kwargs(_get(body, "chat_template_kwargs", dict, {}))
    else:
        req.prompts = _prompts(body, limits)
    if len(req.prompts or [None]) * params.n > limits.max_seqs_per_request:
        _bad("n", f"prompts x n must be at most {limits.max_seqs_per_request}, got {len(req.prompts)} x {params.n}")
    return req
