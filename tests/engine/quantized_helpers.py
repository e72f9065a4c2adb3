"""What the quantized-model tests share: a tiny model written in a format, run by ferry, and the logits
transformers gives on the dequantized reference checkpoint for the same tokens."""
from __future__ import annotations

import torch

from fixtures.prompts import TINY_PROMPT
from shared.sampling_params import SamplingParams
from shared.settings import Settings
from tests.engine.test_tiny_models_vs_transformers import RecordingSampler  # noqa: F401 (re-exported)

STEPS = 16


def tiny_settings(path: str, **overrides) -> Settings:
    return Settings(model=path, dtype="float32", device="cpu", num_kv_blocks=64, block_size=4, **overrides)


def run_greedy(settings: Settings, prompt=TINY_PROMPT):
    """(generated tokens, each step's logits [vocab]) of a greedy run: prefill + STEPS decode steps."""
    from engine.llm import LLM

    llm = LLM(settings)
    recorder = RecordingSampler(llm.runner.sampler)
    llm.runner.sampler = recorder
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=STEPS + 1, ignore_eos=True))[0][0]
    return out, [step[0] for step in recorder.logits]


def reference_logits(ref_dir: str, tokens: list[int], first: int) -> torch.Tensor:
    """transformers on the dequantized-weight checkpoint: the logits predicting tokens[first + 1:]."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(torch.tensor([tokens])).logits[0, first - 1:]
