"""The KV cache's dtype (--kv-cache-dtype) and the fp8 store of the torch backend.

An fp8 cache is float8_e4m3fn with one float32 scale per layer for K and one for V, the `k_scale` and `v_scale`
buffers of engine.layers.attention.Attention (1.0 unless a checkpoint brings calibrated ones): it holds
K / k_scale and V / v_scale saturated to +-448, as vLLM's does. The Triton kernels do the same on CUDA
(kernels.rotary.rotary_store_kv writes, kernels/attention_block.py reads).
"""
from __future__ import annotations

import torch

from engine.memory_plan import kv_cache_dtype
from shared.settings import Settings

FP8_KV = torch.float8_e4m3fn
FP8_MAX = 448.0  # the largest finite e4m3 value
# Where a checkpoint's calibrated scales go: vLLM / llm-compressor name them per attention block,
# model.layers.N.self_attn.{k,v}_scale (older AutoFP8 files: self_attn.{k,v}_proj.output_scale); ferry's
# buffers are model.layers.N.self_attn.attn.{k,v}_scale, float32 scalars.
CHECKPOINT_SCALE_SUFFIXES = {".self_attn.k_scale": ".self_attn.attn.k_scale",
                             ".self_attn.v_scale": ".self_attn.attn.v_scale",
                             ".self_attn.k_proj.output_scale": ".self_attn.attn.k_scale",
                             ".self_attn.v_proj.output_scale": ".self_attn.attn.v_scale"}


def kv_cache_torch_dtype(settings: Settings, model_dtype: torch.dtype) -> torch.dtype:
    return model_dtype if kv_cache_dtype(settings) == "auto" else FP8_KV


def kv_scale_buffer_name(checkpoint_name: str) -> str | None:
    """The buffer a checkpoint tensor of a KV scale loads into, or None when the name is not one."""
    for suffix, ours in CHECKPOINT_SCALE_SUFFIXES.items():
        if checkpoint_name.endswith(suffix):
            return checkpoint_name[: -len(suffix)] + ours
    return None


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale in fp32, saturated, rounded to e4m3 (the same as kernels.rotary.quantize_kv_ref)."""
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_KV)


def store_kv(flat_cache: torch.Tensor, slots: torch.Tensor, x: torch.Tensor, scale: torch.Tensor) -> None:
    """Write x [T, Hkv, D] into rows `slots` of flat_cache [slots, Hkv, D]; an fp8 cache gets x quantized,
    through a uint8 view (the CPU has no float8 index_copy_)."""
    if flat_cache.dtype == FP8_KV:
        flat_cache.view(torch.uint8).index_copy_(0, slots, quantize_fp8(x, scale).view(torch.uint8))
    else:
        flat_cache.index_copy_(0, slots, x)
