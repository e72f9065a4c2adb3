"""engine.Scheduler on its own: hand-made step results, no model, no runner.

Each test plays rank 0 by answering plans with StepResults built here, and reads the plans' packed columns.
"""
import time

import numpy as np
import pytest

from engine.model_config import ModelConfig
from engine.scheduler import PENDING_TOKEN, Scheduler
from engine.sequence import SeqStatus
from shared.codec import pack_ids, unpack_ids
from shared.errors import InvalidParameter, PromptTooLong
from shared.messages import SeqDelta, StepResult
from shared.sampling_params import SamplingParams
from shared.settings import Settings

EOS = 2
BS = 4  # tokens per KV block


def tiny_config(max_model_len=64) -> ModelConfig:
    return ModelConfig.from_hf_dict(dict(vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=1, max_position_embeddings=max_model_len,
                                         eos_token_id=EOS))


def make(num_blocks=32, max_num_seqs=8, max_num_batched_tokens=64, max_inflight=1, prefix=True, max_model_len=64):
    settings = Settings(block_size=BS, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                        enable_prefix_caching=prefix)
    return Scheduler(settings, tiny_config(max_model_len), num_blocks, max_inflight=max_inflight)


def params(**kw):
    kw.setdefault("max_tokens", 8)
    kw.setdefault("ignore_eos", True)
    return SamplingParams(temperature=0.0, **kw)


def cols(plan) -> dict:
    """A plan's per-sequence columns as lists."""
    return dict(seq_ids=unpack_ids(plan.seq_ids).tolist(), num_tokens=unpack_ids(plan.num_tokens).tolist(),
                starts=unpack_ids(plan.start_positions).tolist(), token_ids=unpack_ids(plan.token_ids).tolist(),
                kept=unpack_ids(plan.blocks_kept).tolist(), num_new_blocks=unpack_ids(plan.num_new_blocks).tolist(),
                new_blocks=unpack_ids(plan.new_block_ids).tolist(), sample=list(plan.sample_mask),
                forget=unpack_ids(plan.finished_seq_ids).tolist(), new_seqs=[s.seq_id for s in plan.new_seqs])


def answer(plan, token=7) -> StepResult:
    """Rank 0's result: `token` (or token(seq_id)) for every sampled sequence of the plan."""
    ids = unpack_ids(plan.seq_ids)[np.frombuffer(plan.sample_mask, np.uint8).astype(bool)].tolist()
    return StepResult(plan.step_id, pack_ids(ids), pack_ids([token(i) if callable(token) else token for i in ids]))


def step(sched, token=7) -> tuple[dict, list[SeqDelta]]:
    plan = sched.schedule()
    assert plan is not None
    return cols(plan), sched.update(answer(plan, token))


def tokens(delta: SeqDelta) -> list[int]:
    return unpack_ids(delta.token_ids).tolist()


def test_prefill_then_decode():
    s = make()
    s.add_request("r", 5, list(range(10, 16)), params(max_tokens=2))
    c, deltas = step(s, token=40)
    assert c["seq_ids"] == [0] and c["num_tokens"] == [6] and c["starts"] == [0] and c["sample"] == [1]
    assert c["token_ids"] == list(range(10, 16)) and c["new_seqs"] == [0]
    assert c["kept"] == [0] and c["num_new_blocks"] == [2] and len(set(c["new_blocks"])) == 2
    (d,) = deltas
    assert (d.request_id, d.gateway_id, d.index, tokens(d), d.finish_reason) == ("r", 5, 0, [40], None)
    assert (d.prompt_tokens, d.completion_tokens, d.cached_tokens) == (6, 1, 0)
    c, deltas = step(s, token=41)
    assert c["num_tokens"] == [1] and c["starts"] == [6] and c["token_ids"] == [40] and c["new_seqs"] == []
    assert c["kept"] == [2] and c["num_new_blocks"] == [0]  # position 6 still fits the second block
    assert [(tokens(d), d.finish_reason, d.completion_tokens) for d in deltas] == [([41], "length", 2)]
    assert not s.requests and not s.running and s.blocks.num_free_blocks == s.blocks.num_blocks
    c, deltas = step(s)  # the runner is told to forget the finished sequence
    assert c["seq_ids"] == [] and c["forget"] == [0] and deltas == []
    assert not s.has_work() and s.schedule() is None


def test_stop_token_and_eos():
    s = make()
    s.add_request("eos", 0, [1, 2, 3], params(ignore_eos=False))
    s.add_request("stop", 0, [1, 2, 3], params(stop_token_ids=[9], min_tokens=1))
    _, deltas = step(s, token=lambda sid: EOS if sid == 0 else 9)
    assert [(d.request_id, d.finish_reason) for d in deltas] == [("eos", "stop"), ("stop", None)]  # min_tokens
    _, deltas = step(s, token=9)
    assert [(d.request_id, d.finish_reason) for d in deltas] == [("stop", "stop")]


def test_token_budget_chunks_prefill():
    s = make(max_num_batched_tokens=8)
    s.add_request("long", 0, list(range(20)), params(max_tokens=1))
    s.add_request("short", 0, [1, 2, 3], params(max_tokens=1))
    c, deltas = step(s)
    assert c["seq_ids"] == [0] and c["num_tokens"] == [8] and c["sample"] == [0] and deltas == []
    c, _ = step(s)
    assert c["num_tokens"] == [8] and c["starts"] == [8]
    # the last chunk (4) leaves room in the budget for a waiting prompt, itself cut to what is left
    c, deltas = step(s)
    assert c["seq_ids"] == [0, 1] and c["num_tokens"] == [4, 3] and c["starts"] == [16, 0]
    assert c["sample"] == [1, 1] and [d.request_id for d in deltas] == ["long", "short"]


def test_waiting_prompt_is_chunked_to_the_budget_left():
    s = make(max_num_batched_tokens=8)
    s.add_request("a", 0, list(range(6)), params())
    s.add_request("b", 0, list(range(50, 56)), params())
    c, deltas = step(s)
    assert c["seq_ids"] == [0, 1] and c["num_tokens"] == [6, 2] and c["sample"] == [1, 0]
    assert [d.request_id for d in deltas] == ["a"]
    c, _ = step(s)  # decodes first (one-token sequences lead the plan), then the rest of b's prompt
    assert c["seq_ids"] == [0, 1] and c["num_tokens"] == [1, 4] and c["starts"] == [6, 2]


def test_max_num_seqs():
    s = make(max_num_seqs=2)
    for i in range(3):
        s.add_request(f"r{i}", 0, [1, 2, 3], params())
    c, _ = step(s)
    assert c["seq_ids"] == [0, 1] and len(s.waiting) == 1


def test_preemption_takes_the_newest_and_readmits_it_first():
    s = make(num_blocks=4, prefix=False)  # no prefix cache: the preempted sequence is recomputed in full
    for i in range(3):
        s.add_request(f"r{i}", 0, [1, 2, 3, 4], params())  # one block each
    c, _ = step(s)
    assert c["seq_ids"] == [0, 1, 2] and s.blocks.num_free_blocks == 1
    r0, r1, r2 = (s.requests[f"r{i}"].seqs[0] for i in range(3))
    # every sequence needs a second block now, and only one is left: r2 (the newest) makes room for r1
    c, _ = step(s)
    assert c["seq_ids"] == [0, 1] and s.num_preemptions == 1
    assert r2.status is SeqStatus.WAITING and not r2.block_table and r2.num_computed_tokens == 0
    s.add_request("late", 0, [5, 6, 7], params())
    assert list(s.waiting) == [r2, s.requests["late"].seqs[0]]  # the preempted one goes to the front
    assert s.abort_request("r0")  # frees two blocks: enough for r2's recompute, not for the late one too
    c, _ = step(s)
    assert c["forget"] == [r0.seq_id] and c["seq_ids"] == [1, 2]
    i = c["seq_ids"].index(2)
    # recomputed from scratch: its prompt and the token it had sampled; the runner's block table is replaced
    assert c["starts"][i] == 0 and c["num_tokens"][i] == 5 and c["token_ids"][-5:] == [1, 2, 3, 4, 7]
    assert c["kept"][i] == 0 and c["num_new_blocks"][i] == 2 and c["sample"][i] == 1 and 2 not in c["new_seqs"]
    assert r2.status is SeqStatus.RUNNING and s.requests["late"].seqs[0].status is SeqStatus.WAITING


def test_no_admission_in_a_step_that_preempted():
    s = make(num_blocks=3)
    s.add_request("a", 0, [1, 2, 3, 4], params())
    s.add_request("b", 0, [1, 2, 3, 4], params())
    step(s)
    s.add_request("c", 0, [9], params())  # would fit in the block b's preemption frees
    c, _ = step(s)
    assert c["seq_ids"] == [0] and s.num_preemptions == 1
    assert [seq.request_id for seq in s.waiting] == ["b", "c"]


def test_leader_first_then_siblings_share_its_prompt_blocks():
    s = make(max_inflight=2)
    prompt = list(range(30, 39))  # two full blocks and one token
    s.add_request("n3", 0, prompt, params(n=3, seed=11))
    leader, *siblings = s.requests["n3"].seqs
    assert [seq.params.seed for seq in s.requests["n3"].seqs] == [11, 12, 13]
    p0 = s.schedule()
    assert cols(p0)["seq_ids"] == [leader.seq_id]  # siblings wait for the leader's prompt blocks
    p1 = s.schedule()  # overlapped: the leader's first token is not back, so they still wait
    assert cols(p1)["seq_ids"] == [leader.seq_id] and cols(p1)["token_ids"] == [PENDING_TOKEN]
    assert list(s.waiting) == siblings
    s.update(answer(p0))
    p2 = s.schedule()
    c = cols(p2)
    assert c["seq_ids"] == [leader.seq_id] + [seq.seq_id for seq in siblings]
    # the leader on its token from p1; the siblings compute only the last prompt token
    assert c["num_tokens"] == [1, 1, 1] and c["starts"] == [10, 8, 8] and c["token_ids"] == [PENDING_TOKEN, 38, 38]
    for seq in siblings:
        assert seq.block_table[:2] == leader.block_table[:2] and seq.num_cached_tokens == 8
    assert s.blocks.blocks[leader.block_table[0]].ref_count == 3
    assert s.prefix_hit_tokens == 16 and s.prefix_queried_tokens == 27
    assert [d.index for d in s.update(answer(p1))] == [0]
    deltas = s.update(answer(p2))
    assert [(d.index, d.cached_tokens, d.completion_tokens) for d in deltas] == [(0, 0, 3), (1, 8, 1), (2, 8, 1)]


def test_leader_aborted_lets_the_siblings_go():
    s = make()
    s.add_request("n2", 0, list(range(9)), params(n=2))
    s.schedule()
    assert s.abort_request("n2", 0)
    s.update(StepResult(0, b"", b""))
    c, _ = step(s)
    assert c["seq_ids"] == [1] and c["forget"] == [0] and c["num_tokens"] == [9]


def test_pending_tokens_that_reach_max_tokens_stop_scheduling():
    s = make(max_inflight=2)
    s.add_request("r", 0, [1, 2, 3], params(max_tokens=2))
    p0 = s.schedule()
    p1 = s.schedule()
    assert cols(p1)["token_ids"] == [PENDING_TOKEN] and cols(p1)["starts"] == [3]
    assert s.schedule() is None and not s.can_schedule  # two plans out: the most it was told
    s.update(answer(p0, 20))
    # one token back, one pending: max_tokens is reached once it lands, so no third step for it
    assert s.can_schedule and s.schedule() is None
    (d,) = s.update(answer(p1, 21))
    assert d.finish_reason == "length" and d.completion_tokens == 2
    assert s.requests == {} and cols(s.schedule())["forget"] == [0]


def test_forget_list_only_holds_sequences_the_runner_knows():
    s = make(max_num_seqs=1)
    s.add_request("runs", 0, [1, 2, 3], params())
    s.add_request("waits", 0, [4, 5, 6], params())
    step(s)
    assert s.abort_request("waits") and s.abort_request("runs")
    assert s.has_work()  # only to tell the runner
    c, deltas = step(s)
    assert c["forget"] == [0] and c["seq_ids"] == [] and deltas == []
    assert not s.has_work() and s.blocks.num_free_blocks == s.blocks.num_blocks


def test_requests_that_never_fit_are_rejected():
    s = make(num_blocks=4, max_model_len=32)
    with pytest.raises(PromptTooLong) as e:
        s.add_request("kv", 0, list(range(10)), params(max_tokens=8))  # 18 tokens: 5 blocks of 4 tokens
    assert e.value.param == "max_tokens"
    with pytest.raises(PromptTooLong):
        s.add_request("ctx", 0, list(range(40)), params())  # longer than the context
    with pytest.raises(InvalidParameter):
        s.add_request("bad", 0, [1, 2], params(n=0))  # validated at the edge; the engine keeps what it relies on
    for ids in ([1, 100], [-1, 2], [2 ** 31 - 1]):  # outside the vocabulary (100): an embedding lookup would crash
        with pytest.raises(InvalidParameter) as e:
            s.add_request("oov", 0, ids, params(max_tokens=2))
        assert e.value.param == "prompt"
    with pytest.raises(InvalidParameter):
        s.add_request("forged", 0, [1, 2], params(max_tokens=2, top_p=float("nan")))  # params a forger built
    with pytest.raises(InvalidParameter):
        s.add_request("wide", 0, [1, 2], params(max_tokens=1, n=10 ** 9))  # would stall the loop building sequences
    assert not s.requests and not s.waiting and not s.has_work()
    s.add_request("fits", 0, list(range(8)), params(max_tokens=8))
    with pytest.raises(InvalidParameter):
        s.add_request("fits", 0, [1], params())  # the id is taken
    assert len(s.waiting) == 1


def test_prefix_cache_hit_across_requests():
    s = make()
    prompt = list(range(40, 49))
    s.add_request("first", 0, prompt, params(max_tokens=1))
    step(s)
    s.add_request("again", 0, prompt + [3], params(max_tokens=1))
    c, (d,) = step(s)
    assert c["starts"] == [8] and c["num_tokens"] == [2] and d.cached_tokens == 8
    assert s.prefix_hit_tokens == 8 and s.prefix_queried_tokens == 19
    off = make(prefix=False)
    off.add_request("first", 0, prompt, params(max_tokens=1))
    step(off)
    off.add_request("again", 0, prompt, params(max_tokens=1))
    assert step(off)[0]["starts"] == [0] and off.prefix_hit_tokens == 0


def test_abort_is_idempotent_and_a_single_choice_reports_its_end():
    s = make()
    assert not s.abort_request("nobody") and not s.abort_request("nobody", 0)
    s.add_request("n2", 3, [1, 2, 3], params(n=2))
    s.add_request("n3", 3, [1, 2, 3], params(n=3))
    step(s)
    assert s.abort_request("n2", 1) and s.num_unfinished("n2") == 1
    assert s.abort_request("n2", 1) and s.abort_request("n2", 5)  # known request: no-ops, nothing more to report
    assert s.abort_request("n3", 2)
    assert s.abort_request("n3") and not s.abort_request("n3") and s.num_unfinished("n3") == 0
    c, deltas = step(s)
    # the one-choice abort of n3 went with the whole request; n2's goes out with the next result
    assert [(d.request_id, d.index, d.finish_reason, d.gateway_id) for d in deltas[:1]] == [("n2", 1, "abort", 3)]
    assert [(d.request_id, d.index) for d in deltas] == [("n2", 1), ("n2", 0)]
    assert tokens(deltas[0]) == [] and deltas[0].completion_tokens == 0  # it never ran: its leader had not
    assert c["forget"] == [2]  # only n3's leader ever reached the runner
    assert s.abort_request("n2", 0) and "n2" not in s.requests  # its last choice: the request ends
    assert [d.finish_reason for d in step(s)[1]] == ["abort"]


def test_result_for_a_step_not_planned_or_out_of_order_is_dropped(caplog):
    s = make(max_inflight=2)
    s.add_request("r", 0, [1, 2, 3], params())
    assert s.update(StepResult(0, pack_ids([0]), pack_ids([5]))) == []  # nothing planned yet
    p0, p1 = s.schedule(), s.schedule()
    assert s.update(answer(p1)) == [] and [st.step_id for st in s.inflight] == [0, 1]
    assert s.update(StepResult(99, b"", b"")) == []
    assert "dropped a result for step 99" in caplog.text
    assert [tokens(d) for d in s.update(answer(p0, 5))] == [[5]] and [st.step_id for st in s.inflight] == [1]
    assert [tokens(d) for d in s.update(answer(p1, 6))] == [[6]] and not s.inflight


def test_aborted_while_its_step_runs():
    s = make(max_inflight=2)
    s.add_request("r", 0, [1, 2, 3], params())
    p0 = s.schedule()
    s.abort_request("r")
    assert s.update(answer(p0)) == []  # the token of a finished sequence is dropped
    assert cols(s.schedule())["forget"] == [0]


def test_preempted_while_its_step_runs_keeps_the_token():
    s = make(num_blocks=2, max_inflight=2)
    s.add_request("a", 0, [1, 2, 3, 4], params(max_tokens=4))
    s.add_request("b", 0, [5, 6, 7, 8], params(max_tokens=4))
    p0 = s.schedule()
    p1 = s.schedule()  # both need a second block for the placeholder: b is preempted for a
    assert cols(p1)["seq_ids"] == [0] and s.num_preemptions == 1
    b = s.requests["b"].seqs[0]
    deltas = s.update(answer(p0, token=lambda sid: 60 + sid))
    assert [(d.request_id, tokens(d)) for d in deltas] == [("a", [60]), ("b", [61])]
    assert b.token_ids == [5, 6, 7, 8, 61] and b.status is SeqStatus.WAITING and b.num_pending == 0


def test_abort_of_ten_thousand_choices_is_linear():
    n = 10_000
    s = make(num_blocks=4096, max_num_seqs=256, max_num_batched_tokens=4096)
    s.add_request("wide", 0, list(range(8)), params(n=n, max_tokens=4))
    step(s)  # the leader's prompt is cached now
    step(s)  # 255 siblings run, the rest wait
    assert len(s.running) == 256 and len(s.waiting) == n - 256
    t0 = time.perf_counter()
    assert s.abort_request("wide")
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"aborting {n} sequences took {elapsed:.2f}s"  # quadratic takes many seconds
    assert not s.running and not s.waiting and not s.requests and s.num_finished == n
    assert s.blocks.num_free_blocks == s.blocks.num_blocks
    assert sorted(cols(s.schedule())["forget"]) == list(range(256))


def test_stats_count_what_is_there():
    s = make()
    s.add_request("a", 0, [1, 2, 3], params(n=2))
    step(s)
    st = s.stats()
    assert (st.num_running, st.num_waiting, st.num_requests) == (1, 1, 1)
    assert st.num_total_blocks - st.num_free_blocks == 1 and st.num_finished == 0


def test_per_choice_seeds_stay_in_range_and_the_plan_encodes():
    """seed + i overflowed uint64 at 2**64 - 1 (issue 13); choices now wrap below 2**63, and the plan encodes."""
    from shared.codec import decode, encode
    from shared.sampling_params import SEED_LIMIT

    sched = make()
    sched.add_request("r", 0, [1, 2, 3], SamplingParams(temperature=1.0, max_tokens=2, n=3, seed=SEED_LIMIT - 2))
    assert [s.params.seed for s in sched.requests["r"].seqs] == [SEED_LIMIT - 2, SEED_LIMIT - 1, 0]
    for _ in range(3):  # the leader's prefill, then its siblings join
        plan = sched.schedule()
        assert decode(encode(plan)).step_id == plan.step_id
        sched.update(answer(plan))
    with pytest.raises(InvalidParameter):  # a forged request out of range is refused, not planned
        sched.add_request("bad", 0, [1, 2, 3], SamplingParams(temperature=1.0, max_tokens=2, n=2, seed=2**64 - 1))
    assert "bad" not in sched.requests
