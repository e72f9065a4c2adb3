"""Several outputs of one request that wait together leave as one chunk (a gateway catching up on a backlog).

One step's delta per choice is the usual case and goes through untouched; a choice that got several deltas
since its handler last ran gets one, with their text, logprobs and token ids in order and the last finish
reason, so the client sees the same text in fewer SSE events and the gateway encodes and writes each
request once per wake-up instead of once per step.
"""
from __future__ import annotations

import asyncio

from shared.messages import ChoiceDelta, RequestError


def take_queued(queue: asyncio.Queue, observe, batch: list) -> RequestError | None:
    """Move the (prompt index, output) items waiting in queue onto batch, each observed, without awaiting; stops at
    an error and returns it (the outputs before it go out first)."""
    while queue.qsize():
        index, msg = queue.get_nowait()
        observe(index, msg)
        if type(msg) is RequestError:
            return msg
        batch.append((index, msg))
    return None


def merge_deltas(placed: list[tuple[int, ChoiceDelta, int]]) -> list[tuple[int, ChoiceDelta, int]]:
    """(choice index, delta, text offset before) entries, one per choice, in the order the choices first came."""
    if len(placed) < 2:
        return placed
    merged: dict[int, tuple[int, ChoiceDelta, int]] = {}
    for ci, d, offset in placed:
        seen = merged.get(ci)
        if seen is None:
            merged[ci] = (ci, d, offset)
            continue
        a, first_offset = seen[1], seen[2]
        merged[ci] = (ci, ChoiceDelta(a.index, a.text + d.text, d.finish_reason or a.finish_reason,
                                      max(a.completion_tokens, d.completion_tokens), a.logprobs + d.logprobs,
                                      a.token_ids + d.token_ids), first_offset)
    return list(merged.values())
