"""The runner's side of grammar-constrained decoding: one xgrammar matcher per constrained sequence.

Why here: with steps in flight the runner knows step N's tokens before the scheduler does, and every rank samples, so
each rank keeps the same deterministic matchers. ModelRunner.submit launches step N+1's forward, then finishes step N
(advance() feeds N's tokens to the matchers), then samples N+1: fill() writes N+1's masks on the CPU while the GPU
runs N+1's forward, which needs no mask. A sequence whose grammar is complete is only allowed its EOS tokens, so the
scheduler ends it as it ends any other (finish_reason "stop").

Nothing here runs for a step without constrained sequences: the runner checks `active` (one int) first.
"""
from __future__ import annotations

import logging

import torch
import xgrammar as xgr

from engine.structured.grammars import GrammarCompiler

log = logging.getLogger(__name__)


class GrammarDecoding:
    def __init__(self, load_tokenizer, vocab_size: int, device: torch.device, max_rows: int):
        self._load_tokenizer = load_tokenizer  # called once, at the first constrained sequence
        self._compiler: GrammarCompiler | None = None
        self.vocab_size, self.device = vocab_size, device
        self.active = 0  # sequences with a matcher
        self._host = xgr.allocate_token_bitmask(max_rows, vocab_size)
        if device.type == "cuda":
            self._host = self._host.pin_memory()

    def attach(self, state) -> None:
        """Give a new sequence (engine.sampler.SamplingState) its matcher. A grammar that cannot be compiled is
        logged and the sequence runs unconstrained: the gateway checked the spec, so only a forged or odd one gets
        here, and it must not take the runner down."""
        p = state.params
        if self._compiler is None:
            self._compiler = GrammarCompiler(self._load_tokenizer(), self.vocab_size)
        try:
            compiled = self._compiler.compile(p.grammar_kind, p.grammar_spec)
            state.grammar = xgr.GrammarMatcher(compiled, override_stop_tokens=state.eos_token_ids or None)
        except Exception:
            log.exception("could not compile a %s grammar; sequence %d runs unconstrained", p.grammar_kind,
                          state.seq_id)
            return
        self.active += 1

    def release(self, state) -> None:
        if state.grammar is not None:
            state.grammar = None
            self.active -= 1

    def advance(self, states: list, tokens: list[int]) -> None:
        """Feed each constrained row its sampled token. A rejected token (min_tokens banning the EOS a complete
        grammar wants, say) drops the matcher: logged, never a crash."""
        for s, t in zip(states, tokens):
            m = s.grammar
            if m is not None and not m.is_terminated() and not m.accept_token(t):
                log.warning("a grammar rejected token %d; sequence %d runs unconstrained from here", t, s.seq_id)
                self.release(s)

    def fill(self, states: list) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Masks for the rows whose matcher still runs: (int32 [K, words] on the device, rows [K]); None if none.
        The host buffer is reused: the copy of step N's masks has ended once step N is finished, before N+1 fills."""
        rows = []
        for i, s in enumerate(states):
            m = s.grammar
            if m is not None and not m.is_terminated():
                m.fill_next_token_bitmask(self._host, len(rows))
                rows.append(i)
        if not rows:
            return None
        mask, index = self._host[:len(rows)], torch.tensor(rows, dtype=torch.int32)
        if self.device.type == "cuda":
            return mask.to(self.device, non_blocking=True), index.to(self.device, non_blocking=True)
        return mask, index


def apply_masks(logits: torch.Tensor, masks: tuple[torch.Tensor, torch.Tensor]) -> None:
    """In place: a Triton kernel on CUDA, plain torch on the CPU."""
    if logits.is_cuda:
        from kernels.token_bitmask import apply_token_bitmask

        apply_token_bitmask(logits, *masks)
    else:
        from kernels.token_bitmask import apply_token_bitmask_ref

        apply_token_bitmask_ref(logits, *masks)
