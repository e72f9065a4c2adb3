"""Must-hold 1 and 3: greedy output of the default model equals transformers generate, token for token,
one prompt at a time and all together; preemption, prefix caching and chunked prefill change nothing."""
import pytest
import torch

from engine.tokenizer import chat_token_ids
from shared.sampling_params import SamplingParams
from tests.engine.conftest import make_llm

NEW_TOKENS = 64
GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS)


@pytest.fixture(scope="module")
def hf_greedy(hf_default_model, chat_prompts):
    outs = []
    for prompt in chat_prompts:
        ids = torch.tensor([prompt])
        gen = hf_default_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                        do_sample=False, pad_token_id=2)
        out = gen[0, len(prompt):].tolist()
        eos = hf_default_model.generation_config.eos_token_id
        if eos in out:  # generate pads after EOS; the engine stops at it
            out = out[:out.index(eos) + 1]
        outs.append(out)
    return outs


def test_one_at_a_time_equals_transformers(default_runner, chat_prompts, hf_greedy):
    llm = make_llm(default_runner)
    for prompt, expected in zip(chat_prompts, hf_greedy):
        assert llm.generate([prompt], GREEDY)[0][0] == expected


def test_batch_equals_transformers(default_runner, chat_prompts, hf_greedy):
    llm = make_llm(default_runner)
    assert [o[0] for o in llm.generate(chat_prompts, GREEDY)] == hf_greedy


def test_preemption_changes_no_output(default_runner, chat_prompts, hf_greedy):
    # 8 prompts of ~40 tokens growing by 64 need ~56 blocks of 16; give the scheduler 20.
    llm = make_llm(default_runner, num_kv_blocks=20)
    assert [o[0] for o in llm.generate(chat_prompts, GREEDY)] == hf_greedy
    assert llm.scheduler.num_preemptions > 0
    assert llm.scheduler.blocks.num_free_blocks == 20


def test_chunked_prefill_changes_no_output(default_runner, chat_prompts, hf_greedy):
    llm = make_llm(default_runner, max_num_batched_tokens=7)  # smaller than every prompt
    assert [o[0] for o in llm.generate(chat_prompts, GREEDY)] == hf_greedy


def test_shared_system_prompt_hits_prefix_cache(default_runner, tokenizer):
    system = ("You are a meticulous assistant for a shipping company. Answer briefly, cite the relevant policy "
              "section, and never invent tracking numbers. Policies: 1. Returns within 30 days. 2. Free shipping "
              "over 50 dollars. 3. Fragile items need extra packaging.")
    questions = ["Can I return a vase after 40 days?", "Is shipping free for a 60 dollar order?",
                 "How should I pack a glass lamp?"]
    prompts = [chat_token_ids(tokenizer, [{"role": "system", "content": system}, {"role": "user", "content": q}])
               for q in questions]
    params = SamplingParams(temperature=0.0, max_tokens=24)
    uncached = make_llm(default_runner, enable_prefix_caching=False)
    expected = [uncached.generate([p], params)[0][0] for p in prompts]
    cached = make_llm(default_runner)
    got = [cached.generate([p], params)[0][0] for p in prompts]  # one after another: later ones hit
    assert got == expected
    system_only = chat_token_ids(tokenizer, [{"role": "system", "content": system}], add_generation_prompt=False)
    shared_blocks = len(system_only) // 16
    assert shared_blocks >= 3
    stats = cached.scheduler.stats()
    assert stats.prefix_queried_tokens == sum(len(p) for p in prompts)
    # the 2nd and 3rd requests skip (at least) the system prompt's full blocks
    assert stats.prefix_hit_tokens >= 2 * 16 * shared_blocks
