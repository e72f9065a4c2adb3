"""Must-hold 4 and 5: seeds make samples independent of the batch; bad parameters raise typed errors.
Also the sampler's filters (top-k, top-p, min-p, penalties, bias, min_tokens) on hand-made logits."""
from types import SimpleNamespace

import pytest
import torch

from engine.sampler import Sampler, SamplingState
from engine.scheduler import Scheduler
from shared.errors import InvalidParameter, PromptTooLong
from shared.sampling_params import SamplingParams
from shared.settings import Settings
from tests.engine.conftest import make_llm


def sampled(params, prompt, llm):
    return llm.generate([prompt], params)[0][0]


def test_same_seed_same_text_whatever_the_batch(default_runner, chat_prompts):
    llm = make_llm(default_runner)
    seeded = SamplingParams(temperature=1.0, top_p=0.95, seed=1234, max_tokens=24, ignore_eos=True)
    alone = sampled(seeded, chat_prompts[0], llm)
    others = [SamplingParams(temperature=0.9, max_tokens=n, ignore_eos=True) for n in (5, 30, 12)]
    together = llm.generate([chat_prompts[1], chat_prompts[0], chat_prompts[2], chat_prompts[3]],
                            [others[0], seeded, others[1], others[2]])
    assert together[1][0] == alone
    different = sampled(SamplingParams(temperature=1.0, top_p=0.95, seed=4321, max_tokens=24, ignore_eos=True),
                        chat_prompts[0], llm)
    assert different != alone


def test_n_samples_share_prompt_and_differ(default_runner, chat_prompts):
    llm = make_llm(default_runner)
    outs = llm.generate([chat_prompts[4]], SamplingParams(temperature=1.0, n=3, seed=7, max_tokens=16,
                                                         ignore_eos=True))[0]
    assert len(outs) == 3 and all(len(o) == 16 for o in outs)
    assert len({tuple(o) for o in outs}) == 3
    # siblings waited for the first sample's prompt and then shared its full blocks
    assert llm.scheduler.prefix_hit_tokens >= 2 * (len(chat_prompts[4]) // 16) * 16


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.5), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -2), ("top_k", 0), ("n", 0),
    ("max_tokens", 0), ("logprobs", 21), ("min_p", 1.5), ("repetition_penalty", 0.0),
])
def test_bad_parameters_raise_typed_errors(field, value):
    with pytest.raises(InvalidParameter) as err:
        SamplingParams(**{field: value}).validate()
    assert err.value.param == field and field in str(err.value)
    assert err.value.status == 400


def test_prompt_too_long_is_rejected(default_runner):
    llm = make_llm(default_runner, max_model_len=64)
    with pytest.raises(PromptTooLong) as err:
        llm.scheduler.add_request("r", 0, list(range(60)), SamplingParams(max_tokens=10))
    assert err.value.param == "max_tokens" and "64" in str(err.value)
    with pytest.raises(PromptTooLong):
        llm.scheduler.add_request("r2", 0, list(range(70)), SamplingParams(max_tokens=1))
    tiny_pool = make_llm(default_runner, num_kv_blocks=2)
    with pytest.raises(PromptTooLong, match="KV blocks"):
        tiny_pool.scheduler.add_request("r3", 0, list(range(40)), SamplingParams(max_tokens=1))
    assert not llm.scheduler.has_work() and not tiny_pool.scheduler.has_work()


def test_the_length_check_changes_nothing_and_max_tokens_is_resolved_apart():
    left_out = SamplingParams(max_tokens=None, logit_bias={5: 1.0})
    left_out.check_length(10, 64, vocab_size=100)
    assert left_out.max_tokens is None  # checked, not filled in
    resolved = left_out.with_max_tokens_for(10, 64)
    assert resolved.max_tokens == 54 and left_out.max_tokens is None and resolved.logit_bias == {5: 1.0}
    given = SamplingParams(max_tokens=8)
    assert given.with_max_tokens_for(10, 64) is given
    with pytest.raises(PromptTooLong) as err:
        SamplingParams(max_tokens=60).check_length(10, 64)
    assert err.value.param == "max_tokens" and "70 tokens (10 in the prompt, 60 for the completion)" in str(err.value)
    with pytest.raises(InvalidParameter, match="outside the vocabulary") as err:
        left_out.check_length(10, 64, vocab_size=5)
    assert err.value.param == "logit_bias"


def test_the_engine_rejects_a_malformed_request_it_was_sent():
    """Params are validated at the edge; a forged EngineRequest still meets a typed error, not a broken loop."""
    config = SimpleNamespace(max_model_len=64, vocab_size=100, eos_token_ids=[0])
    sched = Scheduler(Settings(block_size=16), config, num_kv_blocks=8)
    for bad in (SamplingParams(n=0), SamplingParams(max_tokens=0), SamplingParams(max_tokens=-5)):
        with pytest.raises(InvalidParameter):
            sched.add_request("forged", 0, [1, 2, 3], bad)
    with pytest.raises(InvalidParameter, match="empty"):
        sched.add_request("empty", 0, [], SamplingParams())
    assert not sched.has_work() and not sched.requests
    params = SamplingParams(max_tokens=None)
    sched.add_request("fine", 0, [1, 2, 3], params)
    assert params.max_tokens is None and sched.requests["fine"].seqs[0].params.max_tokens == 61
    assert sched.stats().num_waiting == 1


def _state(**kw):
    return SamplingState.create(0, SamplingParams(**kw), [1], [0], torch.device("cpu"))  # prompt [1], EOS 0


def _draws(logits, n=400, **kw):
    sampler = Sampler(torch.device("cpu"), seed=0)
    return {sampler(logits.clone()[None], [_state(**kw)])[0][0] for _ in range(n)}


def test_filters_restrict_the_support():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0, -1.0])
    assert _draws(logits, temperature=5.0, top_k=2) == {0, 1}
    assert _draws(logits, temperature=1.0, top_p=0.5) == {0}
    assert _draws(logits, temperature=1.0, top_p=0.8) == {0, 1}
    assert _draws(logits, temperature=1.0, min_p=0.3) == {0, 1}
    assert len(_draws(logits, temperature=100.0)) == 6


def test_penalties_bias_and_min_tokens():
    sampler = Sampler(torch.device("cpu"))
    logits = torch.tensor([[1.0, 5.0, 2.0, 0.0]])
    assert sampler(logits.clone(), [_state(temperature=0.0, logit_bias={3: 10.0})])[0] == [3]
    # token 1 is in the prompt: a strong repetition penalty pushes it below token 2
    assert sampler(logits.clone(), [_state(temperature=0.0, repetition_penalty=4.0)])[0] == [2]
    state = _state(temperature=0.0, frequency_penalty=2.0)
    state.output_token_ids = [1, 1]
    assert sampler(logits.clone(), [state])[0] == [2]
    # EOS (token 0) is banned until min_tokens outputs exist
    eos_logits = torch.tensor([[9.0, 1.0, 0.0, 0.0]])
    assert sampler(eos_logits.clone(), [_state(temperature=0.0, min_tokens=2)])[0] == [1]


def test_logprobs_are_log_softmax_of_the_model():
    sampler = Sampler(torch.device("cpu"))
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    tokens, lps = sampler(logits.clone(), [_state(temperature=0.0, logprobs=2)])
    ref = torch.log_softmax(logits[0], -1)
    from shared.codec import unpack_f32, unpack_ids

    assert tokens == [0] and abs(lps[0].token_logprob - ref[0].item()) < 1e-6
    assert unpack_ids(lps[0].top_token_ids).tolist() == [0, 1]
    assert torch.allclose(torch.tensor(unpack_f32(lps[0].top_logprobs).tolist()), ref[:2])
