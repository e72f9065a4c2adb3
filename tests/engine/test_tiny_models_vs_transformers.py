"""Must-hold 2: random-weight tiny Llama, Qwen2 and Qwen3 models give the same logits as transformers
(fp32, max abs diff <= 1e-4) at prefill and at each of 16 decode steps, loaded from safetensors."""
import pytest
import torch

from fixtures.models import TINY_CONFIGS, make_hf_model
from fixtures.prompts import TINY_PROMPT
from shared.sampling_params import SamplingParams
from shared.settings import Settings

STEPS = 16


class RecordingSampler:
    """Wraps the runner's sampler to keep every step's logits."""

    def __init__(self, inner):
        self.inner, self.logits = inner, []

    def sample(self, logits, states, grammar_masks=None):
        self.logits.append(logits.detach().clone())
        return self.inner.sample(logits, states, grammar_masks)

    def finish(self, *args):
        return self.inner.finish(*args)


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_logits_match_transformers(name, tmp_path):
    from engine.llm import LLM

    hf = make_hf_model(name, tmp_path)
    llm = LLM(Settings(model=str(tmp_path), dtype="float32", device="cpu", num_kv_blocks=64, block_size=4))
    recorder = RecordingSampler(llm.runner.sampler)
    llm.runner.sampler = recorder
    prompt = TINY_PROMPT  # 11 tokens: crosses block boundaries of 4
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=STEPS + 1, ignore_eos=True))[0][0]
    assert len(recorder.logits) == STEPS + 1
    with torch.no_grad():
        full = hf(torch.tensor([prompt + out])).logits[0]
    for step, ours in enumerate(recorder.logits):
        ref = full[len(prompt) - 1 + step]
        diff = (ours[0] - ref).abs().max().item()
        assert diff <= 1e-4, f"{name}: step {step} differs by {diff}"
