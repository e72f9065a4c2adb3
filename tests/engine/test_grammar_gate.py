"""engine/grammar_gate.py: a constrained prompt waits (while others run) until the runners report its grammar
compiled, so that no step waits for a compile. The scheduler with hand-made results, then the runner's compile
thread with the default model's tokenizer."""
import dataclasses
import json
import threading
import time

import numpy as np
import pytest
import torch

from engine.grammar_gate import GrammarGate, grammar_key
from engine.structured.decoding import GrammarDecoding
from shared.codec import pack_ids, unpack_ids
from shared.messages import StepResult
from shared.sampling_params import SamplingParams
from tests.engine.test_scheduler import cols, make, params

REGEX = r"[a-z]{3}"


def constrained(spec=REGEX, **kw):
    return dataclasses.replace(params(ignore_eos=False, **kw), grammar_kind="regex", grammar_spec=spec)


def answer(plan, compiled=()):
    ids = unpack_ids(plan.seq_ids)[np.frombuffer(plan.sample_mask, dtype=np.uint8).astype(bool)].tolist()
    return StepResult(plan.step_id, pack_ids(ids), pack_ids([7] * len(ids)), grammars_compiled=list(compiled))


def test_idle_engine_admits_a_constrained_prompt_at_once():
    sched = make()
    sched.add_request("g", 0, [5, 6, 7], constrained())
    plan = sched.schedule()
    assert cols(plan)["new_seqs"] == [0]  # nothing else runs: no one would wait for the compile
    assert [g.key for g in plan.grammars_to_compile] == [grammar_key("regex", REGEX)]
    assert plan.grammars_to_compile[0].spec == REGEX


def test_busy_engine_holds_the_prompt_until_its_grammar_is_compiled():
    sched = make()
    sched.add_request("plain", 0, [5, 6, 7], params(max_tokens=20))
    sched.update(answer(sched.schedule()))  # "plain" is decoding
    sched.add_request("g", 0, [8, 9], constrained())
    sched.add_request("after", 0, [10, 11], params(max_tokens=20))
    plan = sched.schedule()
    c = cols(plan)
    assert c["new_seqs"] == [2]  # "after" goes past the waiting constrained prompt
    assert 1 not in c["seq_ids"] and [g.kind for g in plan.grammars_to_compile] == ["regex"]
    sched.update(answer(plan))
    plan = sched.schedule()  # not reported yet: still waiting, and not sent twice
    assert 1 not in cols(plan)["seq_ids"] and plan.grammars_to_compile == []
    sched.update(answer(plan, compiled=[grammar_key("regex", REGEX)]))
    plan = sched.schedule()
    assert cols(plan)["new_seqs"] == [1]  # compiled: admitted


def test_a_compiled_grammar_is_not_sent_again_and_does_not_wait():
    sched = make()
    sched.add_request("plain", 0, [5, 6, 7], params(max_tokens=30))
    sched.update(answer(sched.schedule()))
    sched.add_request("g1", 0, [8, 9], constrained())
    sched.update(answer(sched.schedule(), compiled=[grammar_key("regex", REGEX)]))
    sched.update(answer(sched.schedule()))
    sched.add_request("g2", 0, [8, 9, 10], constrained())  # the same grammar again
    plan = sched.schedule()
    assert plan.grammars_to_compile == [] and 2 in cols(plan)["new_seqs"]


def test_gate_bounds_the_wait_and_forgets_old_grammars(monkeypatch):
    gate = GrammarGate(remember=2)
    keys = [gate.note(constrained(spec=f"[a-{c}]")) for c in "bcd"]
    assert len(gate.take_outgoing()) == 3 and gate.take_outgoing() == []
    assert gate.must_wait(keys[0], busy=True) and not gate.must_wait(keys[0], busy=False)
    assert gate.note(params()) == 0 and not gate.must_wait(0, busy=True)
    gate.compiled(keys)
    assert list(gate.ready) == keys[1:]  # the oldest forgotten: it would be compiled again
    assert not gate.must_wait(keys[2], busy=True)
    later = gate.note(constrained(spec="[x-z]"))
    monkeypatch.setattr(time, "monotonic", lambda: 1e12)  # a report lost with a dropped result: not held for good
    assert not gate.must_wait(later, busy=True)


def test_runner_compiles_on_its_own_thread_and_reports_the_key(tokenizer):
    decoding = GrammarDecoding(lambda: tokenizer, len(tokenizer), torch.device("cpu"), max_rows=4)
    spec = json.dumps({"type": "object", "properties": {f"f{i}": {"type": "integer"} for i in range(30)}})
    key = grammar_key("json_schema", spec)
    decoding.prefetch(key, "json_schema", spec)
    deadline, reported = time.monotonic() + 120, []
    while not reported and time.monotonic() < deadline:
        reported = decoding.take_compiled()
        time.sleep(0.01)
    assert reported == [key] and decoding.take_compiled() == []
    calls, real = [], decoding._compiler._compiler.compile_grammar

    class Counting:  # the xgrammar compiler, counting its compiles
        def compile_grammar(self, g):
            calls.append(g)
            return real(g)
    decoding._compiler._compiler = Counting()
    state = type("State", (), dict(params=SamplingParams(grammar_kind="json_schema", grammar_spec=spec),
                                   eos_token_ids=[], seq_id=0, grammar=None))()
    decoding.attach(state)
    assert state.grammar is not None and decoding.active == 1 and calls == []  # compiled ahead: no compile now


@pytest.mark.parametrize("threads", [1, 2])
def test_a_slow_grammar_holds_only_its_own_compile_thread(threads):
    """With two compile threads a grammar sent after a slow one is reported while the slow one still compiles; with
    one it waits behind it (a CPU runner's default, where the forward needs the cores)."""
    release = threading.Event()

    class SlowCompiler:  # stands in for engine.structured.grammars.GrammarCompiler: "big" compiles until released
        def compile(self, kind, spec):
            if spec == "big":
                assert release.wait(30)
            return spec
    decoding = GrammarDecoding(lambda: None, 8, torch.device("cpu"), max_rows=4, compile_threads=threads)
    decoding._compiler = SlowCompiler()  # already started: no xgrammar, no tokenizer
    big, small = grammar_key("regex", "big"), grammar_key("regex", "small")
    decoding.prefetch(big, "regex", "big")
    decoding.prefetch(small, "regex", "small")
    reported, deadline = [], time.monotonic() + (10 if threads > 1 else 0.5)
    while small not in reported and time.monotonic() < deadline:
        reported += decoding.take_compiled()
        time.sleep(0.01)
    assert reported == ([small] if threads > 1 else [])
    release.set()
    deadline = time.monotonic() + 10
    while len(reported) < 2 and time.monotonic() < deadline:
        reported += decoding.take_compiled()
        time.sleep(0.01)
    assert sorted(reported) == sorted([big, small])
