"""Issue 18: engine/memory_plan.py's weight bytes for quantized models against a real quantized model's
tensors, and `ferry estimate --quantization`: the Llama-3-70B shape in FP8 fits one H200 with KV room."""
import pytest

from engine.memory_plan import plan_rank
from fixtures.quantized_models import tiny_quantized
from shared.settings import Settings
from tests.engine.quantized_helpers import tiny_settings
from tests.engine.test_memory_plan import estimate  # noqa: F401 (the fixture)


@pytest.mark.parametrize("fmt", ["awq", "gptq-desc-act", "ct-w4a16-asym", "ct-fp8-tensor-static", "fp8-dynamic"])
def test_weight_bytes_match_the_loaded_model(fmt, tmp_path):
    from engine.model_runner import ModelRunner

    qdir, _ = tiny_quantized("qwen2", fmt, tmp_path, prompts=[[1, 2, 3]])
    runner = ModelRunner(tiny_settings(qdir), show_progress=False)
    held = [t for t in [*runner.model.parameters(), *runner.model.buffers()] if t.dim()]
    rotary = sum(b.numel() * b.element_size() for n, b in runner.model.named_buffers() if "cos_sin" in n)
    real = sum(t.numel() * t.element_size() for t in held) - rotary
    plan = plan_rank(runner.model_config, tiny_settings(qdir), "cpu")
    static_scales = 4 * 4 * runner.model_config.num_layers if "static" in fmt else 0  # 0-dim, left out above
    assert plan.weights == real + static_scales
    assert plan.weights < plan_rank(runner.model_config.__class__.from_hf_dict(
        {**_config(qdir), "quantization_config": None}), Settings(dtype="float32"), "cpu").weights


def _config(path):
    import json
    import os

    with open(os.path.join(path, "config.json")) as fh:
        return json.load(fh)


def test_estimate_70b_in_fp8_fits_one_h200(estimate):  # noqa: F811
    args = ("--load-format", "dummy", "--hf-config", "llama-3-70b", "--gpu-memory", "139", "--json")
    rc, est = estimate(*args, "--quantization", "fp8")
    assert rc == 0, est
    rank = est["ranks"][0]
    assert 64 * 2**30 < rank["weights"] < 70 * 2**30, rank  # 72.7 GB: 67.7 GiB
    assert rank["kv_blocks"] * rank["kv_bytes_per_block"] > 20 * 2**30, rank
    assert est["quantization"].startswith("fp8-online")
    rc, bf16 = estimate(*args)
    assert rc == 1  # 140 GB of bf16 weights do not fit
    rc, awq = estimate(*args, "--quantization", "awq")
    assert rc == 0 and awq["ranks"][0]["weights"] < rank["weights"] * 0.6
