"""Overlapped steps (the next plan scheduled and launched while the last one runs) produce exactly what
one-step-at-a-time produces: greedy and seeded sampling, penalties (which read the token history),
stop tokens that end a sequence while its next step is already out, n > 1, a shared prefix, and
preemption when the KV cache runs short."""
import dataclasses

import pytest

from fixtures.models import make_hf_model
from shared.codec import pack_ids, unpack_ids
from shared.sampling_params import SamplingParams
from shared.settings import Settings

PREFIX = [3, 17, 99, 4, 250, 8, 8, 61]
PROMPTS = [PREFIX + [12, 5], PREFIX + [200, 7, 7], [1, 2, 3], [9] * 13]


def _settings(path, **kw):
    return Settings(model=str(path), dtype="float32", device="cpu", block_size=4, max_num_seqs=4, **kw)


def run_sync(llm, prompts, params):
    """Reference: schedule, run, apply, one step at a time."""
    ids = []
    for i, (p, sp) in enumerate(zip(prompts, params)):
        llm.scheduler.add_request(f"s{i}", 0, list(p), dataclasses.replace(sp))
        ids.append((f"s{i}", sp.n))
    outs = {rid: [[] for _ in range(n)] for rid, n in ids}
    while llm.scheduler.has_work():
        for o in llm.step():
            outs[o.request_id][o.index].extend(unpack_ids(o.token_ids).tolist())
    return [outs[rid] for rid, _ in ids]


def run_overlapped(llm, prompts, params):
    holes = []
    submit = llm.runner.submit

    def watch(plan):
        holes.append(int((unpack_ids(plan.token_ids) < 0).sum()))
        return submit(plan)

    llm.runner.submit = watch
    try:
        return llm.generate(prompts, params), holes
    finally:
        del llm.runner.submit


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    make_hf_model("llama", path)
    return path


def _params(stop_token=None):
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    return [
        greedy if stop_token is None else dataclasses.replace(greedy, stop_token_ids=[stop_token]),
        SamplingParams(temperature=0.9, top_p=0.9, seed=7, max_tokens=9, ignore_eos=True, n=2),
        SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True, repetition_penalty=1.5,
                       frequency_penalty=0.5),
        SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True),
    ]


@pytest.mark.parametrize("num_kv_blocks", [64, 9], ids=["roomy", "preempting"])
def test_overlapped_equals_one_step_at_a_time(model_dir, num_kv_blocks):
    from engine.llm import LLM

    ref = run_sync(LLM(_settings(model_dir, num_kv_blocks=num_kv_blocks)), PROMPTS, _params())
    llm = LLM(_settings(model_dir, num_kv_blocks=num_kv_blocks))
    got, holes = run_overlapped(llm, PROMPTS, _params())
    assert got == ref
    assert sum(holes) > 0, "no plan carried a pending token: the steps did not overlap"
    assert [len(o) for o in got[1]] == [9, 9] and len(got[3][0]) == 1
    if num_kv_blocks == 9:
        assert llm.scheduler.num_preemptions > 0
    assert not llm.runner.states and not llm.scheduler.running  # every sequence forgotten on both sides


def test_stop_token_while_the_next_step_is_out(model_dir):
    from engine.llm import LLM

    free = LLM(_settings(model_dir, num_kv_blocks=64)).generate(PROMPTS[:1], _params()[:1])[0][0]
    stop = free[4]
    cut = free[:free.index(stop) + 1]
    llm = LLM(_settings(model_dir, num_kv_blocks=64))
    got, _ = run_overlapped(llm, PROMPTS, _params(stop_token=stop))
    assert got[0][0] == cut
    assert got == run_sync(LLM(_settings(model_dir, num_kv_blocks=64)), PROMPTS, _params(stop_token=stop))
    assert llm.scheduler.blocks.num_free_blocks == llm.scheduler.blocks.num_blocks


def test_prefix_shared_under_overlap(model_dir):
    from engine.llm import LLM

    llm = LLM(_settings(model_dir, num_kv_blocks=64))
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    first = llm.generate([PROMPTS[0]], params)
    again = llm.generate([PROMPTS[0], PROMPTS[1]], params)
    assert again[0] == first[0]
    assert llm.scheduler.prefix_hit_tokens >= 2 * len(PREFIX)
    alone = LLM(_settings(model_dir, num_kv_blocks=64, enable_prefix_caching=False)).generate([PROMPTS[1]], params)
    assert again[1] == alone[0]


def test_runner_refuses_a_placeholder_it_cannot_fill(model_dir):
    from engine.llm import LLM

    llm = LLM(_settings(model_dir, num_kv_blocks=64))
    llm.scheduler.add_request("r", 0, [1, 2, 3], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
    plan = llm.scheduler.schedule()
    tokens = unpack_ids(plan.token_ids).copy()
    tokens[-1] = -1  # a pending token, but no step sampled this sequence before
    bad = dataclasses.replace(plan, token_ids=pack_ids(tokens))
    with pytest.raises(RuntimeError, match="did not sample"):
        llm.runner.execute(bad)


def test_abort_while_steps_are_in_flight(model_dir):
    from engine.llm import LLM

    llm = LLM(_settings(model_dir, num_kv_blocks=64))
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    for rid, prompt in (("keep", PROMPTS[0]), ("drop", PROMPTS[2])):
        llm.scheduler.add_request(rid, 0, list(prompt), params)
    got = {"keep": [], "drop": []}
    for _ in range(4):  # a few overlapped steps: one plan is always out when the abort lands
        for o in llm.step_overlapped():
            got[o.request_id].extend(unpack_ids(o.token_ids).tolist())
    assert llm.runner.has_pending
    assert llm.scheduler.abort_request("drop") and not llm.scheduler.abort_request("drop")
    dropped_so_far = len(got["drop"])
    reasons = {}
    while llm.busy:
        for o in llm.step_overlapped():
            got[o.request_id].extend(unpack_ids(o.token_ids).tolist())
            reasons[o.request_id] = o.finish_reason
    assert "drop" not in reasons and len(got["drop"]) == dropped_so_far  # nothing after the abort
    assert reasons["keep"] == "length" and len(got["keep"]) == 12
    assert not llm.runner.states and not llm.scheduler.has_work()
    assert llm.scheduler.blocks.num_free_blocks == llm.scheduler.blocks.num_blocks


def test_abort_one_choice_of_several(model_dir):
    """n=3: aborting choice 1 (a stop string found it) finishes it alone; its siblings run to their end and every
    block comes back."""
    from engine.llm import LLM

    llm = LLM(_settings(model_dir, num_kv_blocks=64))
    llm.scheduler.add_request("r", 0, list(PROMPTS[0]), SamplingParams(temperature=0.8, seed=5, n=3, max_tokens=10,
                                                                       ignore_eos=True))
    got, reasons = {i: [] for i in range(3)}, {}
    for _ in range(4):
        for o in llm.step_overlapped():
            got[o.index].extend(unpack_ids(o.token_ids).tolist())
    llm.scheduler.abort_request("r", 1)
    stopped_at = len(got[1])
    while llm.busy:
        for o in llm.step_overlapped():
            got[o.index].extend(unpack_ids(o.token_ids).tolist())
            reasons[o.index] = o.finish_reason
    assert reasons == {0: "length", 1: "abort", 2: "length"}
    assert len(got[0]) == len(got[2]) == 10 and len(got[1]) == stopped_at < 10
    assert not llm.runner.states and not llm.scheduler.has_work()
    assert llm.scheduler.blocks.num_free_blocks == llm.scheduler.blocks.num_blocks
