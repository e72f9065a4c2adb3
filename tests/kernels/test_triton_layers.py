"""The layers' Triton choice end to end: a tiny model whose layers picked the Triton functions when built (as on
CUDA; here the kernels run in the interpreter on CPU tensors) gives transformers' logits at prefill and decode,
through the engine's own step path (step inputs, attention_context, the decode + prefill kernels, gemv at batch 1)."""
import pytest
import torch

from shared.sampling_params import SamplingParams
from shared.settings import Settings
from tests.engine.test_tiny_models_vs_transformers import RecordingSampler, make_hf_model

STEPS = 4


@pytest.fixture
def layers_pick_triton(monkeypatch):
    import engine.layers.activation
    import engine.layers.attention
    import engine.layers.linear
    import engine.layers.norm

    for module in (engine.layers.activation, engine.layers.attention, engine.layers.linear, engine.layers.norm):
        monkeypatch.setattr(module, "building_on_cuda", lambda: True)


@pytest.mark.parametrize("name", ["qwen2"])  # biased q, k, v (gemv's bias) and grouped KV heads; one model: slow
def test_triton_layers_match_transformers(name, tmp_path, layers_pick_triton):
    from engine.layers.attention import Attention
    from engine.layers.norm import RMSNorm
    from engine.llm import LLM
    from kernels import rms_norm

    hf = make_hf_model(name, tmp_path)
    llm = LLM(Settings(model=str(tmp_path), dtype="float32", device="cpu", num_kv_blocks=64, block_size=4))
    attn = next(m for m in llm.runner.model.modules() if isinstance(m, Attention))
    assert attn.attend.__name__ == "triton_attention"
    assert all(m.norm is rms_norm for m in llm.runner.model.modules() if isinstance(m, RMSNorm))
    recorder = RecordingSampler(llm.runner.sampler)
    llm.runner.sampler = recorder
    prompt = [3, 17, 99, 4, 250, 8, 8, 61, 12, 5, 200]
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=STEPS + 1, ignore_eos=True))[0][0]
    with torch.no_grad():
        full = hf(torch.tensor([prompt + out])).logits[0]
    assert len(recorder.logits) == STEPS + 1
    for step, ours in enumerate(recorder.logits):
        diff = (ours[0] - full[len(prompt) - 1 + step]).abs().max().item()
        assert diff <= 1e-4, f"{name}: step {step} differs by {diff}"


def test_triton_layers_with_an_fp8_cache(tmp_path, monkeypatch):
    """--kv-cache-dtype fp8 through the Triton layers (store, decode and prefill kernels, the layer's scales) gives
    the torch backend's fp8 logits: the same quantized cache read two ways."""
    from engine.layers.attention import Attention
    from engine.llm import LLM

    make_hf_model("qwen2", tmp_path)
    prompt = [3, 17, 99, 4, 250, 8, 8, 61, 12, 5, 200]
    runs = []
    for triton_layers in (False, True):
        if triton_layers:
            import engine.layers.attention

            monkeypatch.setattr(engine.layers.attention, "building_on_cuda", lambda: True)
        llm = LLM(Settings(model=str(tmp_path), dtype="float32", device="cpu", num_kv_blocks=64, block_size=4,
                           kv_cache_dtype="fp8"))
        attn = next(m for m in llm.runner.model.modules() if isinstance(m, Attention))
        assert attn.attend.__name__ == ("triton_attention" if triton_layers else "torch_attention")
        recorder = RecordingSampler(llm.runner.sampler)
        llm.runner.sampler = recorder
        out = llm.generate([prompt, prompt[:5]], SamplingParams(temperature=0.0, max_tokens=STEPS, ignore_eos=True))
        runs.append(([o[0] for o in out], recorder.logits))
    (torch_tokens, torch_logits), (triton_tokens, triton_logits) = runs
    assert triton_tokens == torch_tokens
    for step, (a, b) in enumerate(zip(torch_logits, triton_logits)):
        assert (a - b).abs().max().item() <= 1e-3, f"step {step}"
