"""The rest of the OpenAI and vLLM request surface (issue 14): echo, prompt logprobs, max_tokens 0, best_of,
suffix, and chat's continue_final_message / add_generation_prompt / echo. No sockets, no aiohttp here.

protocol.parse_request reads these once (parse_extras), before the sampling parameters, and applies them to
the parameters it built (apply_extras); the answers use them through ParsedRequest.extras.
"""
from __future__ import annotations

from dataclasses import dataclass

from services.gateway.body_checks import bad as _bad
from services.gateway.body_checks import flag as _flag
from services.tokenizer.prompts import flatten_content
from shared.sampling_params import MAX_LOGPROBS, SamplingParams

EXTRA_COMPLETION_FIELDS = frozenset(("echo", "suffix", "prompt_logprobs"))
EXTRA_CHAT_FIELDS = frozenset(("echo", "prompt_logprobs", "continue_final_message", "add_generation_prompt"))


@dataclass(slots=True)
class Extras:
    echo: bool = False
    prompt_logprobs: int | None = None  # vLLM's, as asked: shown as each choice's prompt_logprobs
    best_of: int | None = None  # more samples than n: the n best by cumulative logprob are returned
    returned_n: int = 1  # n as asked
    show_logprobs: bool = True  # False when only best_of needed them
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    echo_text: str = ""  # chat echo: the final assistant message, which the answer continues

    @property
    def min_max_tokens(self) -> int:
        """max_tokens 0 scores the prompt (echo or prompt_logprobs) without generating."""
        return 0 if self.echo or self.prompt_logprobs is not None else 1


def _count(body: dict, name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _bad(name, f"must be an integer from {low} to {high}, got {value!r}")
    return value


def parse_extras(body: dict, chat: bool, max_n: int) -> Extras:
    if not chat and body.get("suffix") not in (None, ""):
        _bad("suffix", "is not supported (ferry's models do not fill in the middle)")
    x = Extras(echo=_flag(body, "echo", False), prompt_logprobs=_count(body, "prompt_logprobs", 0, MAX_LOGPROBS),
               best_of=_count(body, "best_of", 1, max_n))
    if chat:
        x.add_generation_prompt = _flag(body, "add_generation_prompt", True)
        x.continue_final_message = _flag(body, "continue_final_message", False)
        if x.add_generation_prompt and x.continue_final_message:  # vLLM's rule, in vLLM's words
            _bad("continue_final_message", "cannot be true while add_generation_prompt is true")
    return x


def apply_extras(x: Extras, params: SamplingParams, chat: bool, stream: bool) -> None:
    """Carry what the engine must do into the parameters (called before they are validated)."""
    x.returned_n = params.n
    if chat:
        params.logprobs_follow_text = True
    elif x.echo:
        params.echo = True
        if params.logprobs is not None:  # the prompt's tokens are listed with the completion's
            params.prompt_logprobs = params.logprobs
    if x.prompt_logprobs is not None:
        params.prompt_logprobs = max(params.prompt_logprobs or 0, x.prompt_logprobs)
    if params.max_tokens == 0 and params.prompt_logprobs is None:
        params.prompt_logprobs = 0  # the engine scores the prompt; nothing else comes back
    if x.best_of is not None and x.best_of != params.n:
        if x.best_of < params.n:
            _bad("best_of", f"must be at least n ({params.n}), got {x.best_of}")
        if stream:
            _bad("best_of", "cannot be used with stream (the best samples are known only at the end)")
        params.n = x.best_of
        if params.logprobs is None:  # needed to rank the samples; not shown
            params.logprobs, x.show_logprobs = 0, False


def chat_echo_text(messages: list[dict]) -> str:
    """vLLM's chat echo: the last message's content when it is the assistant's (the answer's role)."""
    last = messages[-1]
    return flatten_content(last.get("content"), "messages[-1]") if last.get("role") == "assistant" else ""
