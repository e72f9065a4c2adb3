"""Issue 18, must-hold 1: every quantized checkpoint format loads, its logits match transformers on the
dequantized-weight reference at prefill and over 16 decode steps, and its greedy output equals the
reference's (tiny random Llama and Qwen2 written by fixtures/quantized_models.py, fp32 on the CPU).

Tolerances, as a fraction of the reference logits' largest magnitude:
- W4A16 (AWQ, GPTQ, compressed-tensors pack-quantized): 1e-5. The kernel's dequantized weight is exactly the
  reference's (4-bit codes times fp16/bf16 scales are exact in fp32), so only summation order differs
  (measured about 4e-7).
- FP8 W8A8: 5e-2. The weights are the reference's exactly, but the activations are quantized to e4m3 (3
  mantissa bits: each element within 2^-4 relative) before every matmul; measured 2-3% of the logit range.
"""
import pytest

from fixtures.prompts import TINY_PROMPT
from fixtures.quantized_models import FORMATS, tiny_quantized
from tests.engine.quantized_helpers import STEPS, reference_logits, run_greedy, tiny_settings

W4A16_TOLERANCE, FP8_TOLERANCE = 1e-5, 5e-2
CASES = [("llama", f) for f in FORMATS] + [("qwen2", f) for f in ("awq", "gptq-desc-act", "ct-fp8-tensor-static")]


@pytest.mark.parametrize("name,fmt", CASES)
def test_logits_and_greedy_match_the_dequantized_reference(name, fmt, tmp_path):
    qdir, rdir = tiny_quantized(name, fmt, tmp_path, prompts=[TINY_PROMPT])
    out, logits = run_greedy(tiny_settings(qdir))
    assert len(logits) == STEPS + 1
    ref = reference_logits(rdir, TINY_PROMPT + out, len(TINY_PROMPT))
    tolerance = (FP8_TOLERANCE if "fp8" in fmt else W4A16_TOLERANCE) * ref.abs().max().item()
    for step, ours in enumerate(logits):
        diff = (ours - ref[step]).abs().max().item()
        assert diff <= tolerance, f"{name} {fmt}: step {step} differs by {diff} (tolerance {tolerance})"
    assert run_greedy(tiny_settings(rdir))[0] == out
