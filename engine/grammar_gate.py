"""The scheduler's side of grammar compilation: a constrained prompt waits for its grammar, not the other way round.

Compiling a grammar (xgrammar, in the runner) takes from a millisecond to over a second for a large JSON schema. Done
inside a step, it would stall every running sequence for that long: one request hurting all the others. So a new
constrained request's grammar goes to the runners in the next plan (StepPlan.grammars_to_compile), which compile it on
a thread of their own; while other sequences run, the prompt stays waiting (those behind it are admitted past it)
until a StepResult lists the grammar as compiled (StepResult.grammars_compiled). With nothing else running it is
admitted at once: the runner then compiles as the sequence arrives, and the only one who waits is the request itself.
"""
from __future__ import annotations

import hashlib
import time
from collections import OrderedDict

from shared.messages import GrammarSpec
from shared.sampling_params import SamplingParams

# Grammars a runner keeps compiled (engine/structured/grammars.py's LRU); the gate remembers as many as ready.
GRAMMAR_CACHE_SIZE = 256
# A prompt waits at most this long for its report (one lost with a dropped result must not hold it for good; a
# compile still running then is waited for inside the step, as without the gate).
WAIT_LIMIT_S = 30.0


def grammar_key(kind: str, spec: str) -> int:
    """A grammar's name on the wire: 56 bits of its hash (a collision only costs a compile inside a step)."""
    return int.from_bytes(hashlib.blake2b(f"{kind}\0{spec}".encode(), digest_size=7).digest(), "little")


class GrammarGate:
    def __init__(self, remember: int = GRAMMAR_CACHE_SIZE):
        self.remember = remember
        self.ready: OrderedDict[int, None] = OrderedDict()  # compiled on the runners, most recent last
        self.requested: dict[int, float] = {}  # sent, not yet reported: key -> when
        self.outgoing: list[GrammarSpec] = []  # for the next plan

    def note(self, params: SamplingParams) -> int:
        """A new request: its grammar's key (0: unconstrained), queued for the runners unless they have it."""
        if not params.grammar_kind:
            return 0
        key = grammar_key(params.grammar_kind, params.grammar_spec)
        if key in self.ready:
            self.ready.move_to_end(key)
        elif key not in self.requested:
            self.requested[key] = time.monotonic()
            self.outgoing.append(GrammarSpec(key, params.grammar_kind, params.grammar_spec))
        return key

    def must_wait(self, key: int, busy: bool) -> bool:
        """Whether a prompt with this grammar key stays waiting: only while others run and it is not compiled."""
        if not busy or key == 0 or key in self.ready:
            return False
        return time.monotonic() - self.requested.get(key, 0.0) < WAIT_LIMIT_S

    def take_outgoing(self) -> list[GrammarSpec]:
        out, self.outgoing = self.outgoing, []
        return out

    def compiled(self, keys: list[int]) -> None:
        for key in keys:
            self.requested.pop(key, None)
            self.ready[key] = None
            self.ready.move_to_end(key)
        while len(self.ready) > self.remember:
            self.ready.popitem(last=False)
