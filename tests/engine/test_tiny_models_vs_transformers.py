"""Must-hold 2: random-weight tiny Llama, Qwen2 and Qwen3 models give the same logits as transformers
(fp32, max abs diff <= 1e-4) at prefill and at each of 16 decode steps, loaded from safetensors."""
import pytest
import torch

from shared.sampling_params import SamplingParams
from shared.settings import Settings

STEPS = 16
COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=256, rms_norm_eps=1e-6)

CONFIGS = {
    "llama": lambda: __import__("transformers").LlamaConfig(**COMMON, num_key_value_heads=2, rope_theta=10000.0,
                                                             tie_word_embeddings=False),
    "llama-tied-llama3-rope": lambda: __import__("transformers").LlamaConfig(
        **COMMON, num_key_value_heads=1, tie_word_embeddings=True,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=32), rope_theta=500000.0),
    "qwen2": lambda: __import__("transformers").Qwen2Config(**COMMON, num_key_value_heads=2, tie_word_embeddings=False),
    "qwen3": lambda: __import__("transformers").Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=32,
                                                             tie_word_embeddings=True),
}


class RecordingSampler:
    """Wraps the runner's sampler to keep every step's logits."""

    def __init__(self, inner):
        self.inner, self.logits = inner, []

    def sample(self, logits, states):
        self.logits.append(logits.detach().clone())
        return self.inner.sample(logits, states)

    def finish(self, *args):
        return self.inner.finish(*args)


def make_hf_model(name, tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1234)
    config = CONFIGS[name]()
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # random biases too (Qwen2), so a missing bias would show
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(name, tmp_path):
    from engine.llm import LLM

    hf = make_hf_model(name, tmp_path)
    llm = LLM(Settings(model=str(tmp_path), dtype="float32", device="cpu", num_kv_blocks=64, block_size=4))
    recorder = RecordingSampler(llm.runner.sampler)
    llm.runner.sampler = recorder
    prompt = [3, 17, 99, 4, 250, 8, 8, 61, 12, 5, 200]  # 11 tokens: crosses block boundaries of 4
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=STEPS + 1, ignore_eos=True))[0][0]
    assert len(recorder.logits) == STEPS + 1
    with torch.no_grad():
        full = hf(torch.tensor([prompt + out])).logits[0]
    for step, ours in enumerate(recorder.logits):
        ref = full[len(prompt) - 1 + step]
        diff = (ours[0] - ref).abs().max().item()
        assert diff <= 1e-4, f"{name}: step {step} differs by {diff}"
