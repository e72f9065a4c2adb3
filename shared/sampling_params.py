"""Sampling parameters of one request.

A request's params are validated once, where they enter the system (validate(), in the gateway's
parser); the tokenizer, which knows the prompt's length, checks that it fits (check_length()) and
resolves a left-out max_tokens (with_max_tokens_for()). Neither check changes what it checks.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from shared.errors import InvalidParameter, PromptTooLong

MAX_LOGPROBS = 20
INT32_MAX = 2**31 - 1  # token ids travel packed as int32; counts are bounded the same way
SEED_LIMIT = 2**63  # seeds are 0 <= seed < 2**63: a signed int64 for msgpack and torch, whatever is added to it


def choice_seed(seed: int, index: int) -> int:
    """The seed of choice `index` of a request seeded with `seed`: distinct per choice, never out of range."""
    return (seed + index) % SEED_LIMIT


GRAMMAR_KINDS = ("json_schema", "json_object", "regex", "choice", "grammar")
_FLOATS = ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")
_INTS = ("max_tokens", "top_k", "n", "logprobs", "min_tokens", "prompt_logprobs")


@dataclass(slots=True)
class SamplingParams:
    max_tokens: int | None = 16  # None: up to the end of the context
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = -1  # -1 disables
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    n: int = 1
    logprobs: int | None = None  # None: none; k: the chosen token's plus the top k
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)  # stop strings, applied by the detokenizer
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # issue 14: None: none; k: each prompt token's logprob (from position 1) plus the top k, computed by the runner
    # for this request only (it skips the prefix cache for it). max_tokens 0 is allowed then: score, not generate.
    prompt_logprobs: int | None = None
    echo: bool = False  # completions: the detokenizer sends the prompt's text back first
    # chat: a token's logprob only with its text, none for a stop string or EOS the text leaves out (completions
    # keep one per generated token, as vLLM's do: lm-eval counts on it)
    logprobs_follow_text: bool = False
    # issue 15: a grammar the output must follow (engine/structured/): kind "" is none; else one of GRAMMAR_KINDS,
    # its spec canonical text (a JSON schema, a regex, an EBNF grammar, a JSON array of choices)
    grammar_kind: str = ""
    grammar_spec: str = ""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def needs_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def validate(self) -> "SamplingParams":
        def bad(param: str, msg: str):
            raise InvalidParameter(f"{param} {msg}", param=param)

        for name in _FLOATS:  # NaN passes every comparison below, and infinity most: neither is a setting
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                bad(name, f"must be a finite number, got {value!r}")
        for name in _INTS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or abs(value) > INT32_MAX):
                bad(name, f"must be an integer of at most {INT32_MAX} in size, got {value!r}")
        if self.max_tokens is not None and self.max_tokens < (0 if self.prompt_logprobs is not None else 1):
            bad("max_tokens", f"must be at least 1 (0 only with echo or prompt_logprobs), got {self.max_tokens}")
        if self.temperature < 0:
            bad("temperature", f"must be non-negative, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < -1 or self.top_k == 0:
            bad("top_k", f"must be -1 (disable) or at least 1, got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            bad("min_p", f"must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            bad("repetition_penalty", f"must be greater than zero, got {self.repetition_penalty}")
        if not -2 <= self.presence_penalty <= 2:
            bad("presence_penalty", f"must be in [-2, 2], got {self.presence_penalty}")
        if not -2 <= self.frequency_penalty <= 2:
            bad("frequency_penalty", f"must be in [-2, 2], got {self.frequency_penalty}")
        if not isinstance(self.n, int) or self.n < 1:
            bad("n", f"must be at least 1, got {self.n}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            bad("logprobs", f"must be between 0 and {MAX_LOGPROBS}, got {self.logprobs}")
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= MAX_LOGPROBS:
            bad("prompt_logprobs", f"must be between 0 and {MAX_LOGPROBS}, got {self.prompt_logprobs}")
        if self.max_tokens == 0 and self.n != 1:
            bad("n", f"must be 1 when max_tokens is 0 (the prompt is scored, not sampled), got {self.n}")
        if self.min_tokens < 0:
            bad("min_tokens", f"must be non-negative, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            bad("min_tokens", f"must not exceed max_tokens ({self.max_tokens}), got {self.min_tokens}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or not 0 <= self.seed < SEED_LIMIT):
            bad("seed", f"must be an integer in [0, {SEED_LIMIT - 1}], got {self.seed!r}")
        for tok, bias in self.logit_bias.items():
            if not isinstance(tok, int) or not 0 <= tok <= INT32_MAX:
                bad("logit_bias", f"keys must be token ids (0 to {INT32_MAX}), got {tok!r}")
            if not isinstance(bias, (int, float)) or not -100 <= bias <= 100:  # NaN fails this too
                bad("logit_bias", f"values must be in [-100, 100], got {bias} for token {tok}")
        for tok in self.stop_token_ids:
            if not isinstance(tok, int) or not 0 <= tok <= INT32_MAX:
                bad("stop_token_ids", f"must be token ids (0 to {INT32_MAX}), got {tok!r}")
        if self.grammar_kind and self.grammar_kind not in GRAMMAR_KINDS:
            bad("structured_outputs", f"kind must be one of {', '.join(GRAMMAR_KINDS)}, got {self.grammar_kind!r}")
        if self.grammar_kind and self.ignore_eos:  # the grammar ends the output with EOS: ignoring it runs on
            bad("ignore_eos", "cannot be combined with a structured output (response_format, tools or guided_*)")
        return self

    def check_length(self, prompt_len: int, max_model_len: int, vocab_size: int | None = None) -> None:
        """Reject a prompt that cannot fit, with the max_tokens asked for (None: any that fits). Changes nothing."""
        if prompt_len == 0:
            raise InvalidParameter("the prompt is empty", param="prompt")
        if prompt_len >= max_model_len:
            raise PromptTooLong(
                f"This model's maximum context length is {max_model_len} tokens, "
                f"but the prompt has {prompt_len} tokens.")
        if self.max_tokens is not None and prompt_len + self.max_tokens > max_model_len:
            raise PromptTooLong(
                f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                f"{prompt_len + self.max_tokens} tokens ({prompt_len} in the prompt, {self.max_tokens} "
                f"for the completion). Please reduce the prompt or max_tokens.", param="max_tokens")
        if vocab_size is not None:
            for tok in list(self.logit_bias) + list(self.stop_token_ids):
                if not 0 <= tok < vocab_size:
                    raise InvalidParameter(f"token id {tok} is outside the vocabulary (size {vocab_size})",
                                           param="logit_bias" if tok in self.logit_bias else "stop_token_ids")

    def with_max_tokens_for(self, prompt_len: int, max_model_len: int) -> "SamplingParams":
        """These params with max_tokens resolved: left out (None), it is the rest of the context. A copy when it
        changes, so the caller's params stay as they were."""
        if self.max_tokens is not None:
            return self
        return dataclasses.replace(self, max_tokens=max_model_len - prompt_len)
