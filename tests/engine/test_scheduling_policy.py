"""The scheduling policy for latency, on engine.Scheduler alone with hand-made requests (see test_scheduler.py):
every running decode is in every step, whatever the token budget; prompt tokens fill only the room left, at most
max_prefill_tokens a step; blocks running short preempt prompts, never decodes already in the step."""
import numpy as np
import pytest

from engine.scheduler import Scheduler
from engine.sequence import SeqStatus
from shared.codec import unpack_ids
from shared.settings import Settings
from tests.engine.test_scheduler import BS, answer, cols, params, step, tiny_config


def make(max_num_batched_tokens=8, max_prefill_tokens=0, num_blocks=256, max_num_seqs=16, max_inflight=1,
         max_model_len=256) -> Scheduler:
    settings = Settings(block_size=BS, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                        max_prefill_tokens=max_prefill_tokens)
    return Scheduler(settings, tiny_config(max_model_len), num_blocks, max_inflight=max_inflight)


def test_decodes_never_wait_behind_a_long_prompt():
    s = make(max_num_batched_tokens=8)
    for i in range(3):
        s.add_request(f"short{i}", 0, [10 + i, 11, 12], params(max_tokens=30))
    c, _ = step(s)
    assert c["num_tokens"] == [3, 3, 2]  # the third prompt is cut to the budget left
    step(s)
    s.add_request("long", 0, list(range(40)), params(max_tokens=2))
    steps_to_first_token = 0
    while True:
        c, deltas = step(s)
        steps_to_first_token += 1
        assert c["seq_ids"][:3] == [0, 1, 2] and c["num_tokens"][:3] == [1, 1, 1]  # every decode, every step
        assert sum(c["num_tokens"]) <= 8
        if any(d.request_id == "long" for d in deltas):
            break
    assert steps_to_first_token == 8  # 40 prompt tokens, 5 a step: what the three decodes leave of 8


def test_every_decode_runs_even_past_the_token_budget():
    s = make(max_num_batched_tokens=8)
    for i in range(6):
        s.add_request(f"r{i}", 0, [10 + i], params(max_tokens=20))
    step(s)
    s.max_num_batched_tokens = 4  # fewer than the decodes: none of them is left out, no prompt gets in
    s.add_request("late", 0, [1, 2, 3], params(max_tokens=4))
    for _ in range(3):
        c, _ = step(s)
        assert c["seq_ids"] == [0, 1, 2, 3, 4, 5] and c["num_tokens"] == [1] * 6
    assert [seq.status for seq in s.requests["late"].seqs] == [SeqStatus.WAITING]


def test_max_prefill_tokens_bounds_every_step():
    s = make(max_num_batched_tokens=64, max_prefill_tokens=6)
    s.add_request("a", 0, list(range(20)), params(max_tokens=3))  # alone in the step: bounded too
    c, _ = step(s)
    assert c["num_tokens"] == [6]
    s.add_request("b", 0, list(range(30, 33)), params(max_tokens=3))
    plans = [step(s)[0] for _ in range(4)]
    # a's chunks first (running before waiting); b gets in with what a's last chunk leaves of the 6
    assert [(p["seq_ids"], p["num_tokens"]) for p in plans] == [([0], [6]), ([0], [6]), ([0, 1], [2, 3]),
                                                                ([0, 1], [1, 1])]
    s.add_request("c", 0, list(range(40, 60)), params(max_tokens=2))
    c, _ = step(s)
    assert c["seq_ids"] == [0, 1, 2] and c["num_tokens"] == [1, 1, 6]  # decodes do not eat into the 6


def test_zero_max_prefill_tokens_leaves_the_budget_to_prompts():
    s = make(max_num_batched_tokens=16)
    s.add_request("a", 0, list(range(40)), params(max_tokens=2))
    c, _ = step(s)
    assert c["num_tokens"] == [16]


def test_running_prompt_chunks_go_before_waiting_prompts():
    s = make(max_num_batched_tokens=8)
    s.add_request("long", 0, list(range(20)), params(max_tokens=2))
    s.add_request("short", 0, [1, 2, 3], params(max_tokens=2))
    for expect in ([0], [0], [0, 1]):  # 8, 8, then long's last 4 and short's 3
        c, _ = step(s)
        assert c["seq_ids"] == expect


def test_short_blocks_preempt_the_prompt_not_the_decode():
    # 6 blocks of 4 tokens: "dec" holds 4 and grows; "long" (12 tokens) cannot get its next chunk's blocks
    s = make(max_num_batched_tokens=8, num_blocks=6)
    s.add_request("dec", 0, list(range(10, 23)), params(max_tokens=8))  # 13 tokens: 4 blocks
    step(s)
    _, deltas = step(s)  # dec's prompt is done: a decode from now on
    s.add_request("long", 0, list(range(40, 52)), params(max_tokens=2))
    tokens = {"dec": len(deltas), "long": 0}
    preempted_long = False
    for _ in range(40):
        if not s.has_work():
            break
        plan = s.schedule()
        c = cols(plan)
        dec = s.requests.get("dec")
        if dec is not None and dec.seqs[0].status is SeqStatus.RUNNING and not s._done_when_pending_arrive(
                dec.seqs[0]):
            assert dec.seqs[0].seq_id in c["seq_ids"]  # the decode is never the one preempted
        if "long" in s.requests and s.requests["long"].seqs[0].status is SeqStatus.WAITING:
            preempted_long |= s.num_preemptions > 0
        for d in s.update(answer(plan)):
            tokens[d.request_id] += len(unpack_ids(d.token_ids))
    assert tokens == {"dec": 8, "long": 2} and not s.requests
    assert preempted_long and s.blocks.num_free_blocks == 6


@pytest.mark.parametrize("budget,max_prefill,inflight", [(8, 0, 1), (16, 5, 1), (32, 12, 2), (6, 2, 2)])
def test_random_arrivals_hold_the_policy(budget, max_prefill, inflight):
    """Requests of random lengths arrive at random steps; in every plan: every decode-ready sequence runs one
    token, prompt tokens stay within min(budget - decodes, max_prefill), and every request ends whole."""
    rng = np.random.default_rng(budget * 100 + max_prefill)
    s = make(max_num_batched_tokens=budget, max_prefill_tokens=max_prefill, num_blocks=4096, max_num_seqs=12,
             max_inflight=inflight)
    asked, got, inflight_plans, next_id = {}, {}, [], 0
    for t in range(20000):  # arrivals for 250 steps, then until drained
        if t < 250 and rng.random() < 0.3:
            rid = f"r{next_id}"
            next_id += 1
            asked[rid] = int(rng.integers(1, 12))
            s.add_request(rid, 0, rng.integers(0, 100, int(rng.integers(1, 50))).tolist(),
                          params(max_tokens=asked[rid]))
        ready = [seq.seq_id for seq in s.running if s._unscheduled(seq) == 1
                 and not s._done_when_pending_arrive(seq)]
        plan = s.schedule()
        if plan is not None:
            c = cols(plan)
            ones = {sid for sid, n in zip(c["seq_ids"], c["num_tokens"]) if n == 1}
            assert set(ready) <= ones
            prefill = sum(n for n in c["num_tokens"] if n > 1)
            room = budget - len(ready)
            assert prefill <= max(0, min(room, max_prefill or room))
            assert sum(c["num_tokens"]) <= max(budget, len(ones))
            inflight_plans.append(plan)
        if inflight_plans and (len(inflight_plans) == inflight or plan is None):
            for d in s.update(answer(inflight_plans.pop(0))):
                got[d.request_id] = got.get(d.request_id, 0) + len(unpack_ids(d.token_ids))
        if t >= 250 and not s.has_work() and not inflight_plans:
            break
    assert got == asked and not s.requests and next_id > 50
