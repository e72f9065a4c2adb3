"""The runner's side of grammar-constrained decoding: one xgrammar matcher per constrained sequence.

Why here: with steps in flight the runner knows step N's tokens before the scheduler does, and every rank samples, so
each rank keeps the same deterministic matchers. ModelRunner.submit launches step N+1's forward, then finishes step N
(advance() feeds N's tokens to the matchers), then samples N+1: fill() writes N+1's masks on the CPU while the GPU
runs N+1's forward, which needs no mask. A sequence whose grammar is complete is only allowed its EOS tokens, so the
scheduler ends it as it ends any other (finish_reason "stop").

Nothing here runs for a step without constrained sequences: the runner checks `active` (one int) first.

Compiling runs on threads of its own (xgrammar releases the GIL while it compiles): the scheduler sends a new
request's grammar ahead (StepPlan.grammars_to_compile, engine/grammar_gate.py), prefetch() compiles it while steps
go on, and take_compiled() reports it in the next StepResult; attach() then finds it compiled. The first grammar
also imports xgrammar and loads the tokenizer on such a thread. With more than one thread (the runner's choice: the
FERRY_GRAMMAR_COMPILE_THREADS knob) a large schema, which may take a second or more, holds only its own thread, and
the grammars sent after it are compiled and reported meanwhile.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch

from engine.grammar_gate import grammar_key

if TYPE_CHECKING:
    from engine.structured.grammars import GrammarCompiler

log = logging.getLogger(__name__)
xgr = None  # xgrammar, imported by GrammarDecoding._start


class GrammarDecoding:
    def __init__(self, load_tokenizer, vocab_size: int, device: torch.device, max_rows: int,
                 compile_threads: int = 1):
        self._load_tokenizer = load_tokenizer  # called once, at the first constrained sequence
        self._compiler: GrammarCompiler | None = None
        self.vocab_size, self.device = vocab_size, device
        self.active = 0  # sequences with a matcher
        self.max_rows = max_rows
        self._pool: ThreadPoolExecutor | None = None  # the compile threads, made at the first grammar
        self.compile_threads = max(1, compile_threads)  # more than one: a large schema holds only its own thread
        self._compiled: deque[int] = deque()  # keys compiled by prefetch(), not yet reported
        self._ahead: dict[int, Future] = {}  # prefetch()es not yet reported, by key
        self._start_lock = threading.Lock()

    def _start(self) -> None:
        """At the first grammar: xgrammar is imported (seconds), the tokenizer loaded and the buffers made only
        then, so a runner that never sees a grammar never pays for them. Runs on the compile thread or, for a
        sequence that comes without a prefetch, on the runner's; whichever is first."""
        with self._start_lock:
            if self._compiler is not None:
                return
            self._start_locked()

    def _start_locked(self) -> None:
        global xgr
        import xgrammar as xgr

        from engine.structured.grammars import GrammarCompiler

        compiler = GrammarCompiler(self._load_tokenizer(), self.vocab_size)
        # fills many rows on threads of its own, without the GIL: a batch of constrained rows costs ~one row's time
        self._batch = xgr.BatchGrammarMatcher(max_threads="auto" if self.device.type == "cuda" else 1)
        self._host = xgr.allocate_token_bitmask(self.max_rows, self.vocab_size)
        self._rows = torch.empty(self.max_rows, dtype=torch.int32)
        if self.device.type == "cuda":  # pinned: the copies to the device do not wait for the host
            self._host, self._rows = self._host.pin_memory(), self._rows.pin_memory()
        self._compiler = compiler  # last: others test it to know the rest is there

    def prefetch(self, key: int, kind: str, spec: str) -> None:
        """Compile a grammar on the compile thread; its key is reported once done (also when it cannot be
        compiled: the sequence then runs unconstrained, as attach() logs)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.compile_threads, thread_name_prefix="grammar")
        self._ahead[key] = self._pool.submit(self._compile_ahead, key, kind, spec)

    def _compile_ahead(self, key: int, kind: str, spec: str) -> None:
        try:
            self._start()
            self._compiler.compile(kind, spec)
        except Exception as e:  # the gateway checked the spec; attach() logs it for the sequence
            log.warning("could not compile a %s grammar ahead: %s", kind, e)
        self._compiled.append(key)

    def take_compiled(self) -> list[int]:
        """Keys compiled since the last call (for rank 0's StepResult)."""
        out = []
        while self._compiled:
            out.append(self._compiled.popleft())
            self._ahead.pop(out[-1], None)
        return out

    def attach(self, state) -> None:
        """Give a new sequence (engine.sampler.SamplingState) its matcher. A grammar that cannot be compiled is
        logged and the sequence runs unconstrained: the gateway checked the spec, so only a forged or odd one gets
        here, and it must not take the runner down."""
        p = state.params
        try:
            ahead = self._ahead.get(grammar_key(p.grammar_kind, p.grammar_spec)) if self._ahead else None
            if ahead is not None:
                ahead.result()  # compiling on the thread: wait for it rather than compile it twice
            if self._compiler is None:
                self._start()
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
