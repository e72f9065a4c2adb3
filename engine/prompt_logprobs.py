"""Logprobs at prompt positions (echo, vLLM's prompt_logprobs, max_tokens 0: scoring a prompt).

The runner side (prompt_targets, score_prompt_rows) looks only at sequences whose params ask, so a step without
such a sequence costs nothing more. A chunk of tokens at positions s..s+n-1 scores the prompt tokens s+1..s+n
that lie in the prompt: row s+i predicts token s+i+1. The scheduler side (PromptScores) gathers one sequence's
chunks in order; a chunk seen twice (recomputed after a preemption) adds only what is new.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from shared.codec import pack_f32, pack_ids, unpack_f32, unpack_ids
from shared.messages import PromptLogprobs

log = logging.getLogger(__name__)
ROWS_PER_CHUNK = 256  # rows x vocabulary float32 logits at once: bounded memory for a long prompt


def prompt_targets(positions: np.ndarray, cu_seqlens: np.ndarray, seq_ids: np.ndarray, prompts: dict[int, list[int]]):
    """For the rows of the step whose sequence is in `prompts` (seq id -> its prompt ids): (hidden rows to score,
    their target token ids, [(seq id, first target, count)]), or None when no row scores a prompt token."""
    rows, targets, spans = [], [], []
    for i, sid in enumerate(seq_ids.tolist()):
        prompt = prompts.get(sid)
        if prompt is None:
            continue
        lo, hi = int(cu_seqlens[i]), int(cu_seqlens[i + 1])
        start = int(positions[lo])
        count = min(start + (hi - lo), len(prompt) - 1) - start
        if count <= 0:
            continue
        rows.append(np.arange(lo, lo + count))
        targets.extend(prompt[start + 1:start + 1 + count])
        spans.append((sid, start + 1, count))
    if not spans:
        return None
    return np.concatenate(rows), np.asarray(targets, dtype=np.int64), spans


@torch.inference_mode()
def score_prompt_rows(compute_logits, hidden: torch.Tensor, rows: np.ndarray, targets: np.ndarray,
                      spans: list[tuple[int, int, int]], top_k: dict[int, int]) -> list[PromptLogprobs]:
    """Log-softmax of the model's logits at `rows`: each target's logprob and rank, and each sequence's top k.
    compute_logits is the model's (every tensor-parallel rank calls it: it all-gathers the vocabulary)."""
    dev = hidden.device
    rows_t = torch.as_tensor(rows, device=dev)
    targets_t = torch.as_tensor(targets, device=dev)
    k_max = max(top_k.values())
    lps, ranks, top_vals, top_ids = [], [], [], []
    for lo in range(0, len(rows), ROWS_PER_CHUNK):
        logits = compute_logits(hidden[rows_t[lo:lo + ROWS_PER_CHUNK]]).float()
        logp = torch.log_softmax(logits, dim=-1)
        tgt = targets_t[lo:lo + ROWS_PER_CHUNK]
        lp = logp.gather(1, tgt[:, None])
        lps.append(lp[:, 0])
        ranks.append((logp > lp).sum(-1) + 1)
        if k_max:
            v, i = logp.topk(k_max, dim=-1)
            top_vals.append(v)
            top_ids.append(i)
    lp_all = torch.cat(lps).cpu().numpy()
    rank_all = torch.cat(ranks).cpu().numpy()
    vals = torch.cat(top_vals).cpu().numpy() if k_max else np.zeros((len(rows), 0), np.float32)
    ids = torch.cat(top_ids).cpu().numpy() if k_max else np.zeros((len(rows), 0), np.int64)
    out, offset = [], 0
    for sid, first, count in spans:
        k = top_k[sid]
        sl = slice(offset, offset + count)
        out.append(PromptLogprobs(sid, first, pack_f32(lp_all[sl]), pack_ids(rank_all[sl]),
                                  pack_ids(ids[sl, :k].reshape(-1)), pack_f32(vals[sl, :k].reshape(-1))))
        offset += count
    return out


def _count(p: PromptLogprobs) -> int:
    return len(p.token_logprobs) // 4


def _slice(p: PromptLogprobs, skip: int) -> PromptLogprobs:
    """p without its first `skip` positions."""
    count = _count(p)
    k = len(p.top_token_ids) // 4 // count if count else 0
    return PromptLogprobs(p.seq_id, p.first_target + skip, p.token_logprobs[4 * skip:], p.ranks[4 * skip:],
                          p.top_token_ids[4 * k * skip:], p.top_logprobs[4 * k * skip:])


class PromptScores:
    """One sequence's prompt logprobs as its chunks come back (the scheduler keeps one per sequence that asks)."""

    __slots__ = ("num_prompt_tokens", "parts", "covered", "sent")

    def __init__(self, num_prompt_tokens: int):
        self.num_prompt_tokens = num_prompt_tokens
        self.parts: list[PromptLogprobs] = []
        self.covered = 0  # prompt tokens 1..covered are scored
        self.sent = False

    @property
    def complete(self) -> bool:
        return self.covered >= self.num_prompt_tokens - 1

    def add(self, part: PromptLogprobs) -> None:
        count = _count(part)
        if part.first_target > self.covered + 1 or count <= 0:
            log.warning("dropped prompt logprobs of sequence %d from %d (have 1..%d)", part.seq_id,
                        part.first_target, self.covered)
            return
        skip = self.covered + 1 - part.first_target
        if skip >= count:
            return  # recomputed after a preemption: known already
        self.parts.append(_slice(part, skip) if skip else part)
        self.covered = part.first_target + count - 1

    def merged(self, seq_id: int) -> PromptLogprobs:
        """Every position in one message (first_target 1)."""
        p = self.parts
        return PromptLogprobs(seq_id, 1, b"".join(x.token_logprobs for x in p), b"".join(x.ranks for x in p),
                              b"".join(x.top_token_ids for x in p), b"".join(x.top_logprobs for x in p))


def unpack_prompt_logprobs(p: PromptLogprobs):
    """(logprobs [count], ranks [count], top ids [count, k], top logprobs [count, k]) as numpy arrays."""
    lps, ranks = unpack_f32(p.token_logprobs), unpack_ids(p.ranks)
    count = len(lps)
    k = len(p.top_token_ids) // 4 // count if count else 0
    return lps, ranks, unpack_ids(p.top_token_ids).reshape(count, k), unpack_f32(p.top_logprobs).reshape(count, k)
