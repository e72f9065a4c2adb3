"""What each setting may be: one table of ranges and choices, checked once when the settings load.

`shared.settings.load_settings` turns every raw value (a flag, a FERRY_* variable, a TOML key) into its field's type
with `coerce` and then calls `check_settings`; `shared.model_groups` checks each model group's settings the same way,
since a models file may set per-model values. A bad value stops start-up with one line naming the flag, the value
and what is allowed (SystemExit, as an unknown setting does), before any process starts or any model loads.

Every numeric setting has an entry in RANGES and every string setting is in CHOICES, CHECKED_BY_OWNER or FREE_TEXT
(tests/services/test_settings_check.py holds the table to that), so a new setting has to say what it allows.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields

from shared.logs import LOG_FORMATS


@dataclass(frozen=True, slots=True)
class Bounds:
    low: float = -math.inf
    high: float = math.inf
    above: bool = False  # low itself is not allowed (a positive time, a share of memory)
    power_of_two: bool = False

    def allows(self, value) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if not self.low <= value <= self.high or (self.above and value == self.low):
            return False
        return not self.power_of_two or (value > 0 and value & (value - 1) == 0)

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.power_of_two:
            return f"a power of two from {low} to {high}"
        if self.high == math.inf:
            return f"{'>' if self.above else '>='} {low}"
        return f"{'above' if self.above else 'from'} {low} {'up ' if self.above else ''}to {high}"


def _number(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def at_least(low: float) -> Bounds:
    return Bounds(low)


def positive() -> Bounds:
    return Bounds(0, above=True)


# Zero is a real choice wherever a comment says so ("0: off / the model's own / no bound"), so those allow it.
RANGES: dict[str, Bounds] = {
    "max_model_len": at_least(0),  # 0: the model's own context length
    "seed": Bounds(-2**63, 2**63 - 1),  # what torch.Generator.manual_seed takes
    # The prefill kernels read 64 keys a tile and address them page by page (kernels/prefill_packed.py asserts the
    # tile is a multiple of the block), and a block is a whole number of such reads: powers of two up to 64.
    "block_size": Bounds(1, 64, power_of_two=True),
    "max_num_seqs": at_least(1),
    # Any budget of at least one token works: prompts are prefilled in chunks and decodes run whatever the budget
    # (engine/scheduler.py), so it needs no relation to block_size or max_model_len.
    "max_num_batched_tokens": at_least(1),
    "gpu_memory_utilization": Bounds(0, 1, above=True),
    "kv_cache_bytes": at_least(0),  # the CPU's KV pool; unused on a GPU
    "num_kv_blocks": at_least(0),  # 0: sized from memory
    "tensor_parallel_size": at_least(1),
    "cuda_graph_max_tokens": at_least(0),  # 0: prompt steps run eagerly
    "port": Bounds(1, 65535),
    "num_tokenizers": at_least(1),
    "gateway_id": at_least(0),
    "tokenizer_id": at_least(0),
    "rank": at_least(0),
    "heartbeat_interval": positive(),  # also every loop's receive timeout: 0 would spin
    "peer_timeout": positive(),
    "max_body_bytes": at_least(1),
    "http_read_timeout": positive(),
    "max_connections": at_least(1),
    "max_header_bytes": at_least(1),
    "max_waiting_requests": at_least(0),  # 0: no bound
    "rate_limit_rpm": at_least(0),  # 0: none
    "rate_limit_tpm": at_least(0),
    "request_timeout": at_least(0.0),  # 0: none
    "max_n": at_least(1),
    "max_prompts_per_request": at_least(1),
    "max_seqs_per_request": at_least(1),
    "max_stop_strings": at_least(0),  # 0: requests may not carry stop strings
    "max_stop_string_chars": at_least(1),
    "max_stop_token_ids": at_least(0),
    "max_logit_bias": at_least(0),
    "max_json_depth": at_least(1),
    "max_frame_bytes": at_least(1),
    "gateway_timeout": positive(),
    "shutdown_timeout": at_least(0.0),  # 0: end what is in flight at once
    "model_group": at_least(-1),  # -1: none
    "max_prefill_tokens": at_least(0),  # 0: max_num_batched_tokens
    "max_grammar_chars": at_least(0),  # 0: no grammars
}

CHOICES: dict[str, tuple[str, ...]] = {
    "load_format": ("auto", "safetensors", "gguf", "dummy"),  # engine/loader.py's branches
    "dtype": ("auto", "float32", "bfloat16", "float16"),  # engine.model_runner.DTYPES (a test keeps them equal)
    "device": ("auto", "cpu", "cuda"),  # engine.model_runner.resolve_device: rank r takes GPU r
    "log_format": LOG_FORMATS,
    "log_level": tuple(logging.getLevelNamesMapping()),  # any case: shared.logs upper-cases it
}
CASE_INSENSITIVE = ("log_level",)

# String settings whose choices another module owns and already checks at start (engine/ is not importable here):
CHECKED_BY_OWNER = {
    "kv_cache_dtype": "engine.memory_plan.kv_cache_dtype, called by ferry serve before any process starts",
    "quantization": "engine.quant.detect.read_scheme, as each process reads the model's config",
    "tool_call_parser": "services.gateway.tool_calls.resolve_parser, when the gateway starts",
}
# Names, paths, addresses, keys: anything is a value; the code that opens or parses them says what is wrong.
FREE_TEXT = ("model", "served_model_name", "hf_config", "host", "run_dir", "api_key", "api_key_file",
             "allowed_origins", "curve_keys_dir", "models", "models_file", "model_aliases", "grammar_tokenizer")

TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def coerce(name: str, kind: type, raw):
    """raw (a string from a flag or the environment, or a TOML value) as the field's type; anything that is not
    plainly one (a float for an int, "ture" for a bool, a TOML list for a string) stops start-up."""
    value = _coerced(kind, raw)
    if value is None:
        raise SystemExit(f"invalid setting {flag(name)} {raw!r}: not {_KIND_WORDS[kind]}")
    return value


_KIND_WORDS = {int: "a whole number", float: "a number", str: "a string",
               bool: f"a boolean ({'/'.join(TRUE_WORDS)} or {'/'.join(w for w in FALSE_WORDS if w)})"}


def _coerced(kind: type, raw):
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        word = raw.strip().lower() if isinstance(raw, str) else str(raw) if raw in (0, 1) else None
        return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None
    if kind is str:  # a TOML number is its digits (api_key = 12345); a list or a table is no string
        return raw if isinstance(raw, str) else str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else None
    if isinstance(raw, bool):
        return None
    if isinstance(raw, str):
        try:
            return kind(raw.strip())
        except ValueError:
            return None
    if kind is int:
        return raw if isinstance(raw, int) else int(raw) if isinstance(raw, float) and raw.is_integer() else None
    return float(raw) if isinstance(raw, (int, float)) else None


def problems(settings, combinations: bool = True) -> list[str]:
    """One line for each value no part of ferry can work with, each naming the flag, the value and what is allowed;
    then, when every value is allowed (and combinations is true), one for each pair that can never work."""
    out = []
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.name in RANGES and not RANGES[f.name].allows(value):
            out.append(f"invalid setting {flag(f.name)} {value!r}: must be {RANGES[f.name]}")
        choices = CHOICES.get(f.name)
        seen = value.upper() if f.name in CASE_INSENSITIVE else value
        if choices is not None and seen not in choices:
            out.append(f"invalid setting {flag(f.name)} {value!r}: must be one of {', '.join(choices)}")
    if not out and combinations:
        out += [line for rule in COMBINATIONS if (line := rule(settings))]
    return out


def _rank_in_group(s) -> str | None:
    if s.rank >= s.tensor_parallel_size:
        return (f"invalid setting --rank {s.rank}: must be below --tensor-parallel-size {s.tensor_parallel_size} "
                "(ranks are numbered from 0)")
    return None


def _peers_can_beat(s) -> str | None:
    if s.peer_timeout <= s.heartbeat_interval:  # every peer would be declared dead between two of its beats
        return (f"invalid setting --peer-timeout {s.peer_timeout!r}: must be above --heartbeat-interval "
                f"{s.heartbeat_interval!r}")
    return None


# Settings that are each fine but can never work together. Groups may set tensor_parallel_size in a models file, so
# these run on each group's settings too (shared.model_groups).
COMBINATIONS = (_rank_in_group, _peers_can_beat)


def check_settings(settings, where: str = "", combinations: bool = True):
    """settings, unchanged, when every value is allowed; otherwise SystemExit with one line per problem."""
    found = problems(settings, combinations)
    if found:
        raise SystemExit("\n".join(f"{where}: {line}" if where else line for line in found))
    return settings
