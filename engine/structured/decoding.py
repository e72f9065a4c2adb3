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
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from engine.structured.grammars import GrammarCompiler

log = logging.getLogger(__name__)
xgr = None  # xgrammar, imported by GrammarDecoding._start


class GrammarDecoding:
    def __init__(self, load_tokenizer, vocab_size: int, device: torch.device, max_rows: int):
        self._load_tokenizer = load_tokenizer  # called once, at the first constrained sequence
        self._compiler: GrammarCompiler | None = None
        self.vocab_size, self.device = vocab_size, device
        self.active = 0  # sequences with a matcher
        self.max_rows = max_rows

    def _start(self) -> None:
        """At the first constrained sequence: xgrammar is imported (seconds), the tokenizer loaded and the
        buffers made only then, so a runner that never sees a grammar never pays for them."""
        global xgr
        import xgrammar as xgr

        from engine.structured.grammars import GrammarCompiler

        self._compiler = GrammarCompiler(self._load_tokenizer(), self.vocab_size)
        # fills many rows on threads of its own, without the GIL: a batch of constrained rows costs ~one row's time
        self._batch = xgr.BatchGrammarMatcher(max_threads="auto" if self.device.type == "cuda" else 1)
        self._host = xgr.allocate_token_bitmask(self.max_rows, self.vocab_size)
        self._rows = torch.empty(self.max_rows, dtype=torch.int32)
        if self.device.type == "cuda":  # pinned: the copies to the device do not wait for the host
            self._host, self._rows = self._host.pin_memory(), self._rows.pin_memory()

    def attach(self, state) -> None:
        """Give a new sequence (engine.sampler.SamplingState) its matcher. A grammar that cannot be compiled is
        logged and the sequence runs unconstrained: the gateway checked the spec, so only a forged or odd one gets
        here, and it must not take the runner down."""
        p = state.params
        if self._compiler is None:
            self._start()
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
        live = [(s, t) for s, t in zip(states, tokens) if s.grammar is not None and not s.grammar.is_terminated()]
        if not live:
            return
        accepted = xgr.BatchGrammarMatcher.batch_accept_token([s.grammar for s, _ in live], [t for _, t in live])
        for (s, t), ok in zip(live, accepted):
            if not ok:
                log.warning("a grammar rejected token %d; sequence %d runs unconstrained from here", t, s.seq_id)
                self.release(s)

    def fill(self, states: list) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Masks for the rows whose matcher still runs: (int32 [K, words] on the device, rows [K]); None if none.
        The host buffer is reused: the copy of step N's masks has ended once step N is finished, before N+1 fills."""
        rows = [i for i, s in enumerate(states) if s.grammar is not None and not s.grammar.is_terminated()]
        if not rows:
            return None
        if len(rows) == 1:
            states[rows[0]].grammar.fill_next_token_bitmask(self._host, 0)
        else:
            self._batch.batch_fill_next_token_bitmask([states[i].grammar for i in rows], self._host)
        mask, index = self._host[:len(rows)], self._rows[:len(rows)]
        index.copy_(torch.tensor(rows, dtype=torch.int32))
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
