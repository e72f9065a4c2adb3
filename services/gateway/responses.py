"""Shaping OpenAI response bodies and SSE chunks from RequestOutputs (no sockets, no aiohttp)."""
from __future__ import annotations

import json
import math

from shared.codec import unpack_ids
from shared.messages import ChoiceDelta, RequestOutput, TokenLogprob


def sse(payload) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _top(lp: TokenLogprob, k: int):
    return list(zip(lp.top_tokens, lp.top_logprobs))[:k]


def chat_logprobs(lps: list[TokenLogprob], k: int) -> dict:
    def entry(token, logprob):
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {"content": [{**entry(lp.token, lp.logprob), "top_logprobs": [entry(t, v) for t, v in _top(lp, k)]}
                        for lp in lps]}


def completion_logprobs(lps: list[TokenLogprob], k: int, text_offset: int) -> dict:
    """OpenAI's shape; an echoed prompt's first token has no logprob (NaN inside ferry): null, as OpenAI's."""
    offsets = []
    for lp in lps:
        offsets.append(text_offset)
        text_offset += len(lp.token)
    return {"tokens": [lp.token for lp in lps],
            "token_logprobs": [None if math.isnan(lp.logprob) else lp.logprob for lp in lps],
            "top_logprobs": [None if math.isnan(lp.logprob) else dict(_top(lp, k)) for lp in lps],
            "text_offset": offsets}


def vllm_prompt_logprobs(lps: list[TokenLogprob], prompt_ids: bytes, k: int) -> list:
    """vLLM's prompt_logprobs: null for the first token, then {token id: {logprob, rank, decoded_token}} holding
    the prompt's token and the top k."""
    ids = unpack_ids(prompt_ids).tolist()
    out: list = [None] if lps else []
    for tok, lp in zip(ids[1:], lps[1:]):
        entry = {str(tok): {"logprob": lp.logprob, "rank": lp.rank, "decoded_token": lp.token}}
        top_ids = unpack_ids(lp.top_token_ids).tolist()
        for rank, (tid, piece, value) in enumerate(zip(top_ids[:k], lp.top_tokens, lp.top_logprobs), 1):
            entry.setdefault(str(tid), {"logprob": value, "rank": rank, "decoded_token": piece})
        out.append(entry)
    return out


class Collector:
    """Everything a request has produced so far, over all its choices (and prompts)."""

    def __init__(self, num_choices: int, num_prompts: int = 1):
        self.texts = [""] * num_choices
        self.finish: list[str | None] = [None] * num_choices
        self.sample_finish = self.finish  # every sample's, for the metrics: best_of keeps only some in finish
        self.completion_tokens = [0] * num_choices
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in range(num_choices)]
        self.prompt_tokens = [0] * num_prompts
        self.cached_tokens = [0] * num_prompts
        self.started = [False] * num_choices  # a choice's first delta carries what echo puts before it
        self.prompt_outputs: list[RequestOutput | None] = [None] * num_prompts  # the ones with prompt info

    def add_prompt(self, prompt_index: int, out: RequestOutput) -> None:
        """A prompt's text (echo) and tokens with logprobs, from the first output that has them."""
        seen = self.prompt_outputs[prompt_index]
        if seen is None or (seen.prompt_logprobs is None and out.prompt_logprobs is not None):
            if seen is not None and out.prompt_text is None:
                out.prompt_text = seen.prompt_text
            self.prompt_outputs[prompt_index] = out

    def add(self, prompt_index: int, index: int, delta: ChoiceDelta, prompt_tokens: int, cached: int):
        self.texts[index] += delta.text
        self.completion_tokens[index] = max(self.completion_tokens[index], delta.completion_tokens)
        self.logprobs[index].extend(delta.logprobs)
        if delta.finish_reason is not None:
            self.finish[index] = delta.finish_reason
        if prompt_tokens:
            self.prompt_tokens[prompt_index] = prompt_tokens
            self.cached_tokens[prompt_index] = cached

    def keep_best(self, num_prompts: int, best_of: int, n: int) -> None:
        """best_of: of each prompt's best_of samples, keep the n with the highest cumulative logprob (usage still
        counts every sample's tokens)."""
        keep = []
        for p in range(num_prompts):
            group = range(p * best_of, (p + 1) * best_of)
            # an echoed prompt's first token has no logprob (NaN), and the same prompt before every sample
            keep += sorted(group, key=lambda i: -sum(lp.logprob for lp in self.logprobs[i]
                                                     if not math.isnan(lp.logprob)))[:n]
        self.texts = [self.texts[i] for i in keep]
        self.finish = [self.finish[i] for i in keep]
        self.logprobs = [self.logprobs[i] for i in keep]

    @property
    def done(self) -> bool:
        return all(f is not None for f in self.finish)

    def usage(self) -> dict:
        prompt, completion = sum(self.prompt_tokens), sum(self.completion_tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": sum(self.cached_tokens)}}


def chat_response(rid: str, created: int, model: str, c: Collector, logprobs: int | None, top: int) -> dict:
    choices = []
    for i, text in enumerate(c.texts):
        choices.append({"index": i, "message": {"role": "assistant", "content": text},
                        "logprobs": chat_logprobs(c.logprobs[i], top) if logprobs is not None else None,
                        "finish_reason": c.finish[i]})
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": choices, "usage": c.usage()}


def completion_response(rid: str, created: int, model: str, c: Collector, logprobs: int | None, top: int) -> dict:
    choices = []
    for i, text in enumerate(c.texts):
        choices.append({"index": i, "text": text,
                        "logprobs": completion_logprobs(c.logprobs[i], top, 0) if logprobs is not None else None,
                        "finish_reason": c.finish[i]})
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": c.usage()}


def chat_chunk(rid: str, created: int, model: str, choices: list[dict], usage: dict | None = None) -> dict:
    chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def completion_chunk(rid: str, created: int, model: str, choices: list[dict], usage: dict | None = None) -> dict:
    chunk = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices}
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def chat_role_choices(num_choices: int) -> list[dict]:
    return [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            for i in range(num_choices)]


def chat_delta_choice(index: int, d: ChoiceDelta, logprobs: int | None, top: int) -> dict:
    return {"index": index, "delta": {"content": d.text} if d.text or d.finish_reason is None else {},
            "logprobs": chat_logprobs(d.logprobs, top) if logprobs is not None else None,
            "finish_reason": d.finish_reason}


def completion_delta_choice(index: int, d: ChoiceDelta, logprobs: int | None, top: int, text_offset: int) -> dict:
    return {"index": index, "text": d.text,
            "logprobs": completion_logprobs(d.logprobs, top, text_offset) if logprobs is not None else None,
            "finish_reason": d.finish_reason}


def prompt_logprobs_of(c: Collector, prompt_index: int, k: int) -> list | None:
    out = c.prompt_outputs[prompt_index]
    if out is None or out.prompt_logprobs is None:
        return None
    return vllm_prompt_logprobs(out.prompt_logprobs, out.prompt_token_ids, k)
