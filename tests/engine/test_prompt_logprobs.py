"""Issue 14: logprobs at prompt positions equal a transformers forward pass (tiny random Llama, fp32), also when
the prompt is prefilled in chunks, when its prefix is in the cache already (it must be computed anyway), with
max_tokens 0 (scored, not generated), and beside requests that do not ask (they get none)."""
import torch

from engine.prompt_logprobs import unpack_prompt_logprobs
from fixtures.models import make_hf_model
from fixtures.prompts import TINY_PROMPT
from shared.sampling_params import SamplingParams
from shared.settings import Settings


def _run(llm, prompts, params):
    """Every delta of each request, in order."""
    ids = []
    for i, (prompt, p) in enumerate(zip(prompts, params)):
        p.validate()
        llm.scheduler.add_request(f"r{i}", 0, list(prompt), p)
        ids.append(f"r{i}")
    out = {rid: [] for rid in ids}
    while llm.busy:
        for d in llm.step_overlapped():
            out[d.request_id].append(d)
    return [out[rid] for rid in ids]


def _reference(hf, prompt):
    with torch.no_grad():
        logp = torch.log_softmax(hf(torch.tensor([prompt])).logits[0].float(), -1)
    return logp[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])], logp


def test_prompt_logprobs_match_transformers(tmp_path):
    from engine.llm import LLM

    hf = make_hf_model("llama", tmp_path)
    llm = LLM(Settings(model=str(tmp_path), dtype="float32", device="cpu", num_kv_blocks=64, block_size=4,
                       max_num_batched_tokens=5))  # prompts of 11 tokens go in chunks of at most 5
    prompt = list(TINY_PROMPT)
    ref, full = _reference(hf, prompt)
    plain, scored, zero = _run(llm, [prompt, prompt, prompt], [
        SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True, prompt_logprobs=2),
        SamplingParams(temperature=0.0, max_tokens=0, prompt_logprobs=0)])
    assert all(d.prompt_logprobs is None for d in plain)
    for deltas, k, generated in ((scored, 2, 3), (zero, 0, 0)):
        with_scores = [d for d in deltas if d.prompt_logprobs is not None]
        assert len(with_scores) == 1 and with_scores[0] is deltas[0]
        lps, ranks, top_ids, top_vals = unpack_prompt_logprobs(with_scores[0].prompt_logprobs)
        assert len(lps) == len(prompt) - 1
        assert (torch.tensor(lps) - ref).abs().max().item() <= 1e-4
        expect_ranks = (full[:-1] > ref[:, None]).sum(-1) + 1
        assert ranks.tolist() == expect_ranks.tolist()
        assert top_ids.shape == (len(prompt) - 1, k)
        if k:
            ref_top = full[:-1].topk(k, -1)
            assert top_ids.tolist() == ref_top.indices.tolist()
            assert (torch.tensor(top_vals) - ref_top.values).abs().max().item() <= 1e-4
        assert sum(len(d.token_ids) // 4 for d in deltas) == generated
        assert deltas[-1].finish_reason == "length"
    assert zero[0].completion_tokens == 0 and zero[0].prompt_tokens == len(prompt)
    # The prompt's blocks are cached now; a request that scores it computes it whole all the same.
    (again,) = _run(llm, [prompt], [SamplingParams(temperature=0.0, max_tokens=0, prompt_logprobs=1)])
    lps = unpack_prompt_logprobs(again[0].prompt_logprobs)[0]
    assert again[0].cached_tokens == 0 and (torch.tensor(lps) - ref).abs().max().item() <= 1e-4
    (cached,) = _run(llm, [prompt], [SamplingParams(temperature=0.0, max_tokens=1)])
    assert cached[0].cached_tokens > 0
    assert llm.scheduler.blocks.num_free_blocks == llm.scheduler.blocks.num_blocks  # nothing leaked
