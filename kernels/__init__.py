"""Triton kernels for ferry. Each module holds a kernel, its wrapper and a plain-torch `*_ref`.

Importing needs triton but no GPU: nothing here touches a device until a wrapper is called.
On CPU tensors the wrappers run under TRITON_INTERPRET=1 (set before triton is imported).
"""

from kernels.activation import silu_and_mul, silu_and_mul_ref
from kernels.argmax import argmax, argmax_ref
from kernels.decode_attention import paged_decode_attention, paged_decode_attention_ref
from kernels.fp8_linear import (
    FP8_DTYPE,
    FP8_MAX,
    fp8_linear,
    fp8_linear_ref,
    quantize_fp8_per_channel,
    quantize_fp8_per_token,
)
from kernels.gemv import gemv, gemv_ref
from kernels.prefill_attention import paged_prefill_attention, paged_prefill_attention_ref
from kernels.rmsnorm import rms_norm, rms_norm_ref
from kernels.rotary import apply_rotary_ref, rotary_store_kv, rotary_store_kv_ref
from kernels.token_bitmask import apply_token_bitmask, apply_token_bitmask_ref
from kernels.w4a16 import W4A16Tensors, pack_w4a16, unpack_w4a16, w4a16_dequantize, w4a16_linear, w4a16_linear_ref

__all__ = [
    "apply_rotary_ref", "rotary_store_kv", "rotary_store_kv_ref",
    "argmax", "argmax_ref",
    "gemv", "gemv_ref",
    "paged_decode_attention", "paged_decode_attention_ref",
    "paged_prefill_attention", "paged_prefill_attention_ref",
    "rms_norm", "rms_norm_ref",
    "silu_and_mul", "silu_and_mul_ref",
    "apply_token_bitmask", "apply_token_bitmask_ref",
    "FP8_DTYPE", "FP8_MAX", "fp8_linear", "fp8_linear_ref", "quantize_fp8_per_channel", "quantize_fp8_per_token",
    "W4A16Tensors", "pack_w4a16", "unpack_w4a16", "w4a16_dequantize", "w4a16_linear", "w4a16_linear_ref",
]
