"""Issue 18: the compressed-tensors checkpoints written here, loaded by transformers itself (with the
`compressed-tensors` package, which runs on the CPU), give the logits ferry gives, at prefill and over 16
decode steps. This checks the written layout against the format's own implementation, and, for FP8, that
ferry quantizes activations as compressed-tensors does (per token, or with the static input_scale).

Tolerance 1e-5 of the logits' range: the same dequantized weights and the same activation rounding, only
the summation order differs (measured about 2e-7).

Not compared here: transformers needs gptqmodel or optimum (GPU-side packages) for AWQ and GPTQ; its
`quant_method: fp8` is the block-wise FineGrainedFP8 format, not AutoFP8's per-tensor one; and transformers
5.24 registers an asymmetric pack-quantized layer's weight_zero_point unpacked ([N, K/G]) and so refuses the
packed [N/8, K/G] tensor that compressed-tensors' own compressor writes (pack_to_int32 along dim 0)."""
import pytest

from fixtures.prompts import TINY_PROMPT
from fixtures.quantized_models import tiny_quantized
from tests.engine.quantized_helpers import reference_logits, run_greedy, tiny_settings


@pytest.mark.parametrize("fmt", ["ct-w4a16", "ct-fp8-channel", "ct-fp8-tensor-static"])
def test_compressed_tensors_logits_match_transformers(fmt, tmp_path):
    qdir, _ = tiny_quantized("llama", fmt, tmp_path, prompts=[TINY_PROMPT])
    out, logits = run_greedy(tiny_settings(qdir))
    theirs = reference_logits(qdir, TINY_PROMPT + out, len(TINY_PROMPT))  # transformers on the quantized files
    tolerance = 1e-5 * theirs.abs().max().item()
    for step, ours in enumerate(logits):
        assert (ours - theirs[step]).abs().max().item() <= tolerance, f"{fmt}: step {step}"
