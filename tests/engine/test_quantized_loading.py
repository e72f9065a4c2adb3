"""Issue 18: --quantization fp8 quantizes a 32/16-bit checkpoint while it loads; dummy weights fill the
quantized tensors directly; and every checkpoint or flag ferry cannot load
exactly is a clear error at start, naming what is unsupported."""
import json

import pytest
import torch

from engine.quant.detect import read_scheme
from engine.quant.scheme import QuantScheme, UnsupportedQuantization
from fixtures.prompts import TINY_PROMPT
from fixtures.quantized_models import quantization_config, tiny_quantized
from kernels.fp8_linear import FP8_DTYPE
from shared.sampling_params import SamplingParams
from tests.engine.quantized_helpers import RecordingSampler, reference_logits, run_greedy, tiny_settings
from tests.engine.test_quantized_formats import FP8_TOLERANCE


def test_online_fp8_matches_per_channel_reference(tmp_path):
    """The reference rounds each weight row to e4m3 over its own largest |value|, as the loader must."""
    _, rdir = tiny_quantized("llama", "ct-fp8-channel", tmp_path)
    settings = tiny_settings(str(tmp_path / "source"), quantization="fp8")
    out, logits = run_greedy(settings)
    ref = reference_logits(rdir, TINY_PROMPT + out, len(TINY_PROMPT))
    tolerance = FP8_TOLERANCE * ref.abs().max().item()
    assert max((ours - ref[i]).abs().max().item() for i, ours in enumerate(logits)) <= tolerance
    assert run_greedy(tiny_settings(rdir))[0] == out


def test_online_fp8_holds_fp8_weights_only(tmp_path):
    from engine.model_runner import ModelRunner

    tiny_quantized("llama", "ct-fp8-channel", tmp_path)
    runner = ModelRunner(tiny_settings(str(tmp_path / "source"), quantization="fp8"), show_progress=False)
    layer = runner.model.model.layers[0].self_attn.qkv_proj
    assert layer.weight.weight.dtype == FP8_DTYPE and layer.weight.weight_scale.shape == (layer.out_features,)
    assert not [n for n, p in runner.model.named_parameters() if "proj" in n and p.dim() == 2]


def _dummy_config(tmp_path) -> str:
    cfg = dict(architectures=["LlamaForCausalLM"], hidden_size=256, intermediate_size=512, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, vocab_size=512, max_position_embeddings=128,
               rms_norm_eps=1e-5, tie_word_embeddings=False)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.mark.parametrize("quantization", ["awq", "gptq", "compressed-tensors", "fp8"])
def test_dummy_weights_fill_the_quantized_tensors(quantization, tmp_path):
    from engine.llm import LLM
    from engine.model_runner import ModelRunner

    settings = tiny_settings("", load_format="dummy", hf_config=_dummy_config(tmp_path),
                             quantization=quantization)
    runner = ModelRunner(settings, show_progress=False)
    layer = runner.model.model.layers[0].mlp.down_proj
    assert type(layer.weight).__name__ == ("Fp8Weight" if quantization == "fp8" else "W4A16Weight")
    recorder = RecordingSampler(runner.sampler)
    runner.sampler = recorder
    out = LLM(settings, runner=runner).generate([TINY_PROMPT], SamplingParams(temperature=0.0, max_tokens=3,
                                                                             ignore_eos=True))[0][0]
    assert len(out) == 3 and all(torch.isfinite(step).all() for step in recorder.logits)
    assert len({tuple(step[0].tolist()) for step in recorder.logits}) == 3  # real, varying logits


def _cfg(qc: dict) -> dict:
    return {"num_hidden_layers": 2, "quantization_config": qc}


@pytest.mark.parametrize("qc,message", [
    ({**quantization_config("awq", 128), "bits": 3}, "3-bit weights"),
    ({**quantization_config("awq", 128), "version": "gemv"}, "version 'gemv'"),
    ({**quantization_config("awq", 128), "version": "marlin"}, "version 'marlin'"),
    ({**quantization_config("awq", 128), "zero_point": False}, "zero_point false"),
    ({**quantization_config("awq", 128), "modules_to_not_convert": ["down_proj"]}, "modules_to_not_convert"),
    ({**quantization_config("gptq", 128), "bits": 8}, "8-bit weights"),
    ({**quantization_config("gptq", 128), "checkpoint_format": "marlin"}, "checkpoint_format 'marlin'"),
    ({**quantization_config("gptq", 128), "lm_head": True}, "quantized lm_head"),
    ({"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}, "block-wise"),
    ({"quant_method": "fp8", "activation_scheme": "dynamic", "ignored_layers": ["model.layers.1"]}, "ignored_layers"),
    ({**quantization_config("ct-w4a16", 128), "format": "marlin-24"}, "marlin-24"),
    ({**quantization_config("ct-w4a16", 128), "ignore": []}, "quantized lm_head"),
    ({**quantization_config("ct-w4a16", 128), "kv_cache_scheme": {"num_bits": 8}}, "kv_cache_scheme"),
    ({"quant_method": "bitsandbytes"}, "quant_method 'bitsandbytes'"),
])
def test_unsupported_checkpoints_are_named(qc, message):
    with pytest.raises(UnsupportedQuantization, match=message):
        read_scheme(_cfg(qc))


def test_compressed_tensors_fp8_block_and_w8a16_are_refused():
    qc = quantization_config("ct-fp8-channel", 0)
    qc["config_groups"]["group_0"]["weights"]["strategy"] = "block"
    with pytest.raises(UnsupportedQuantization, match="weight strategy 'block'"):
        read_scheme(_cfg(qc))
    qc = quantization_config("ct-fp8-channel", 0)
    qc["config_groups"]["group_0"]["input_activations"] = None
    with pytest.raises(UnsupportedQuantization, match="W8A16"):
        read_scheme(_cfg(qc))


def test_the_flag_and_the_checkpoint_must_agree():
    with pytest.raises(UnsupportedQuantization, match="does not match"):
        read_scheme(_cfg(quantization_config("awq", 128)), "gptq")
    with pytest.raises(UnsupportedQuantization, match="has no quantization_config"):
        read_scheme({"num_hidden_layers": 2}, "awq")
    with pytest.raises(UnsupportedQuantization, match="'int8' is not supported"):
        read_scheme({"num_hidden_layers": 2}, "int8")
    assert read_scheme({"num_hidden_layers": 2}, "fp8") == QuantScheme("fp8-online")
    assert read_scheme(_cfg(quantization_config("gptq-desc-act", 128)), "gptq").desc_act


def test_a_group_that_does_not_divide_the_layer_is_an_error_at_start(tmp_path):
    from engine.model_runner import ModelRunner

    qdir, _ = tiny_quantized("llama", "awq", tmp_path, group=32)
    cfg = json.loads((tmp_path / "awq" / "config.json").read_text())
    cfg["quantization_config"]["group_size"] = 48  # hidden 64 is not whole groups of 48
    (tmp_path / "awq" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedQuantization, match="64 input features are not whole groups of 48"):
        ModelRunner(tiny_settings(qdir), show_progress=False)


def test_an_output_shard_that_is_not_whole_words_is_an_error():
    from engine.layers.linear import QKVParallelLinear

    with pytest.raises(UnsupportedQuantization, match="not whole words of 8"):
        QKVParallelLinear(64, 4, 4, 1, quant=QuantScheme("awq", group_size=32, asymmetric=True))


def test_a_tensor_of_the_wrong_dtype_is_an_error(tmp_path):
    from safetensors.torch import load_file, save_file

    from engine.model_runner import ModelRunner

    qdir, _ = tiny_quantized("llama", "gptq", tmp_path)
    weights = load_file(f"{qdir}/model.safetensors")
    weights["model.layers.0.mlp.down_proj.qweight"] = weights["model.layers.0.mlp.down_proj.qweight"].to(torch.int64)
    save_file(weights, f"{qdir}/model.safetensors")
    with pytest.raises(UnsupportedQuantization, match="qweight is torch.int64 in the checkpoint"):
        ModelRunner(tiny_settings(qdir), show_progress=False)


def test_norms_and_silu_quantize_for_dynamic_fp8_and_change_nothing(tmp_path, monkeypatch):
    """With per-token activation scales the RMSNorms and SiLU-and-mul before the FP8 projections hand them e4m3
    rows (on a GPU in their own kernels); the logits equal those of the projections quantizing x themselves. A
    static input scale keeps 16-bit outputs (the projection applies the checkpoint's scale)."""
    import importlib

    import torch

    from engine.model_runner import ModelRunner
    tiny_quantized("llama", "ct-fp8-channel", tmp_path / "dynamic")
    settings = tiny_settings(str(tmp_path / "dynamic" / "source"), quantization="fp8")
    layers = ModelRunner(settings, show_progress=False).model.model.layers
    assert all(layer.input_layernorm.norm_fp8 and layer.post_attention_layernorm.norm_fp8 and layer.mlp.act.fn_fp8
               for layer in layers)
    fused = run_greedy(settings)
    fp8_linear_module = importlib.import_module("kernels.fp8_linear")  # the package exports a function of that name
    monkeypatch.setattr(fp8_linear_module, "takes_fp8_input", lambda rows, on_cuda: False)  # read as layers build
    plain = run_greedy(settings)
    assert fused[0] == plain[0] and all(torch.equal(a, b) for a, b in zip(fused[1], plain[1]))
    qdir, _ = tiny_quantized("llama", "ct-fp8-tensor-static", tmp_path / "static", prompts=[TINY_PROMPT])
    layers = ModelRunner(tiny_settings(qdir), show_progress=False).model.model.layers
    assert not any(layer.input_layernorm.norm_fp8 or layer.mlp.act.fn_fp8 for layer in layers)


def test_a_16_bit_model_on_the_cpu_runs_without_triton(tmp_path):
    """triton is a test dependency only: the CPU engine of an unquantized model never imports it (the FP8 paths
    import their kernels when a layer is built for them)."""
    import subprocess
    import sys

    tiny_quantized("llama", "ct-fp8-channel", tmp_path)
    code = ("import sys\nfrom tests.engine.quantized_helpers import run_greedy, tiny_settings\n"
            f"run_greedy(tiny_settings({str(tmp_path / 'source')!r}))\n"
            "print('triton' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-2000:]
