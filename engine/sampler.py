"""Turn a step's logits into tokens, one row per sampled sequence.

Greedy rows take the argmax. Other rows go through penalties, logit bias, temperature, top-k,
top-p and min-p, then are sampled with the exponential-race trick (argmax of p / Exp(1) noise),
which draws from p exactly. A seeded request draws its noise from its own generator, so its samples
do not depend on what else is in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.transfer import to_device
from shared.codec import pack_f32, pack_ids
from shared.messages import SeqLogprobs
from shared.sampling_params import SamplingParams


@dataclass(slots=True, eq=False)
class SamplingState:
    """What the sampler keeps per sequence: its parameters, its history, its own random stream."""

    seq_id: int
    params: SamplingParams
    prompt_token_ids: list[int]
    eos_token_ids: list[int]
    output_token_ids: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    needs_logit_processing: bool = False  # penalties, bias or a min_tokens mask
    grammar: object | None = None  # an xgrammar matcher (engine/structured/decoding.py) while one constrains it

    @classmethod
    def create(cls, seq_id, params, prompt_token_ids, eos_token_ids, device) -> "SamplingState":
        gen = None
        if params.seed is not None and not params.greedy:
            gen = torch.Generator(device=device)
            gen.manual_seed(params.seed)
        special = bool(params.needs_penalties or params.logit_bias or params.min_tokens)
        return cls(seq_id, params, list(prompt_token_ids), list(eos_token_ids), generator=gen,
                   needs_logit_processing=special)


def _apply_penalties(row: torch.Tensor, state: SamplingState) -> None:
    p = state.params
    if p.repetition_penalty != 1.0:
        seen = to_device(sorted(set(state.prompt_token_ids) | set(state.output_token_ids)), row.device)
        vals = row[seen]
        row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and state.output_token_ids:
        counts = torch.bincount(to_device(state.output_token_ids, row.device),
                                minlength=row.shape[0]).to(row.dtype)
        row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)


def _process_row(row: torch.Tensor, state: SamplingState) -> None:
    p = state.params
    if p.needs_penalties:
        _apply_penalties(row, state)
    if p.logit_bias:
        ids = to_device(list(p.logit_bias.keys()), row.device)
        row[ids] += to_device(list(p.logit_bias.values()), row.device, row.dtype)
    if len(state.output_token_ids) < p.min_tokens:
        banned = list(p.stop_token_ids) + ([] if p.ignore_eos else state.eos_token_ids)
        if banned:
            row[to_device(banned, row.device)] = float("-inf")


def _filter(logits: torch.Tensor, states: list[SamplingState]) -> torch.Tensor:
    """Temperature, then top-k, top-p (on the top-k-renormalized distribution) and min-p."""
    device = logits.device
    temps = to_device([s.params.temperature or 1.0 for s in states], device)
    logits = logits / temps[:, None]
    top_k = [s.params.top_k for s in states]
    top_p = [s.params.top_p for s in states]
    if any(k > 0 for k in top_k) or any(p < 1.0 for p in top_p):
        vocab = logits.shape[-1]
        ks = to_device([k if k > 0 else vocab for k in top_k], device)
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        ranks = torch.arange(vocab, device=device)
        sorted_logits = sorted_logits.masked_fill(ranks[None, :] >= ks[:, None], float("-inf"))
        probs = sorted_logits.softmax(-1)
        beyond = (probs.cumsum(-1) - probs) > to_device(top_p, device)[:, None]
        sorted_logits = sorted_logits.masked_fill(beyond, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    min_p = [s.params.min_p for s in states]
    if any(m > 0 for m in min_p):
        probs = logits.softmax(-1)
        floor = to_device(min_p, device)[:, None] * probs.max(-1, keepdim=True).values
        logits = logits.masked_fill(probs < floor, float("-inf"))
    return logits


class Sampler:
    def __init__(self, device: torch.device, seed: int = 0):
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, states: list[SamplingState]) -> tuple[list[int], list[SeqLogprobs]]:
        """Sample and finish in one go (tests, single steps)."""
        tokens, raw_logprobs = self.sample(logits, states)
        token_list = tokens.tolist()
        return token_list, self.finish(token_list, states, raw_logprobs)

    @torch.no_grad()
    def sample(self, logits: torch.Tensor, states: list[SamplingState], grammar_masks=None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Launch the sampling of one token per row; returns the tokens (int64, on logits' device) and, when a
        row asked for logprobs, the raw log-softmax. Nothing here waits for the device. grammar_masks: the
        constrained rows' token bitmasks (engine.structured.decoding.GrammarDecoding.fill), applied first."""
        if grammar_masks is not None:
            from engine.structured.decoding import apply_masks

            apply_masks(logits, grammar_masks)  # in place: the logits are this step's own
        if logits.is_cuda and all(s.params.greedy and s.params.logprobs is None and not s.needs_logit_processing
                                  for s in states):
            from kernels import argmax  # plain greedy decoding: one kernel on the logits as they are

            return argmax(logits), None
        logits = logits.float()
        raw_logprobs = torch.log_softmax(logits, dim=-1) if any(s.params.logprobs is not None for s in states) else None
        if any(s.needs_logit_processing for s in states):
            logits = logits.clone()
            for i, s in enumerate(states):
                if s.needs_logit_processing:
                    _process_row(logits[i], s)
        greedy = [s.params.greedy for s in states]
        tokens = logits.argmax(dim=-1)
        if not all(greedy):
            probs = _filter(logits, states).softmax(-1)
            noise = torch.empty_like(probs)
            noise.exponential_(generator=self.generator)
            for i, s in enumerate(states):
                if s.generator is not None:
                    noise[i].exponential_(generator=s.generator)
            sampled = (probs / noise).argmax(dim=-1)
            tokens = torch.where(to_device(greedy, logits.device), tokens, sampled)
        return tokens, raw_logprobs

    def finish(self, tokens: list[int], states: list[SamplingState], raw_logprobs: torch.Tensor | None
               ) -> list[SeqLogprobs]:
        """Record the sampled tokens in each sequence's history; the logprobs the rows asked for."""
        for s, t in zip(states, tokens):
            s.output_token_ids.append(t)
        return self._logprobs(raw_logprobs, states, tokens) if raw_logprobs is not None else []

    @staticmethod
    def _logprobs(raw: torch.Tensor, states: list[SamplingState], tokens: list[int]) -> list[SeqLogprobs]:
        out = []
        for i, s in enumerate(states):
            k = s.params.logprobs
            if k is None:
                continue
            top_vals, top_ids = raw[i].topk(k) if k > 0 else (raw[i, :0], raw[i, :0].long())
            if s.grammar is not None:  # tokens a grammar forbade are -inf, which JSON cannot carry
                top_vals = top_vals.clamp(min=-9999.0)
            out.append(SeqLogprobs(s.seq_id, float(raw[i, tokens[i]]), pack_ids(top_ids.tolist()),
                                   pack_f32(top_vals.tolist())))
        return out
