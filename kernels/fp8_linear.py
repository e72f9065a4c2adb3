"""FP8 (e4m3) weights with per-output-channel scales: W8A8 with per-token activation scales (dynamic), or one
static activation scale from the checkpoint.

Every FP8 source (compressed-tensors float-quantized, llm-compressor FP8, `--quantization fp8` on a bf16
checkpoint) lands in this one layout: weight [N, K] float8_e4m3fn, weight_scale [N] float32, so
W[n, k] = weight[n, k] * weight_scale[n]; a per-tensor checkpoint scale is repeated over its rows.

SKELETON: the torch reference only. The CUDA path (torch._scaled_mm or Triton, an FP8 GEMV) replaces the
body of `fp8_linear`.
"""
from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max


def quantize_fp8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (weight [N, K] fp8, weight_scale [N] float32), each row scaled to fill e4m3's range."""
    amax = w.abs().amax(dim=1).float().clamp(min=1e-12)
    scale = amax / FP8_MAX
    q = (w.float() / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def quantize_fp8_per_token(x: torch.Tensor, input_scale: torch.Tensor | None = None):
    """x [M, K] -> (x_fp8 [M, K], scale [M, 1] float32): per row (dynamic), or the one static scale."""
    if input_scale is None:
        scale = (x.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp(min=1e-12)
    else:
        scale = input_scale.float().reshape(1, 1).expand(x.shape[0], 1)
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def fp8_linear_ref(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                   input_scale: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    xq, xs = quantize_fp8_per_token(x, input_scale)
    out = (xq.float() * xs) @ (weight.float() * weight_scale.float()[:, None]).t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
               input_scale: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] (bf16/fp16/fp32) -> [M, N] in x's dtype."""
    return fp8_linear_ref(x, weight, weight_scale, input_scale, bias)
