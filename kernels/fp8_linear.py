"""FP8 (e4m3) weights with per-output-channel scales: W8A8 with per-token activation scales (dynamic), or one
static activation scale from the checkpoint.

Every FP8 source (compressed-tensors float-quantized, llm-compressor FP8, `--quantization fp8` on a bf16
checkpoint) lands in this one layout: weight [N, K] float8_e4m3fn, weight_scale [N] float32, so
W[n, k] = weight[n, k] * weight_scale[n]; a per-tensor checkpoint scale is repeated over its rows.

On a GPU, `fp8_linear` picks from the shapes alone (CUDA-graph safe, no host syncs):
- x already quantized by the kernel before (an Fp8Activation from the RMSNorm or SiLU-and-mul: see takes_fp8_input):
  up to SKINNY_MAX_M rows W8A8 in kernels/skinny_gemm.py (fp8 tensor cores fed straight from shared memory, ~1.1
  instructions per weight element against the GEMV's ~3.9), more rows as below without the quantization;
- a 16/32-bit x of up to GEMV_MAX_M rows (the attention output at batch 1): kernels/fp8_gemv.py, W8A16 (x is not
  quantized: a quantization kernel would cost more than the GEMV loses to the skinny kernel at one row);
- up to SKINNY_MAX_M rows (the FERRY_FP8_SKINNY_MAX_M knob, default 32; 0: off): x quantized per token
  (kernels/fp8_quant.py), then the skinny W8A8 kernel. H200, benchmarks/fp8_skinny.py: the 32 layers' projections
  at batch 1 take 1.91 ms in it against 2.49 as before, and batch-1 decode 2.90 ms against 3.15 with the
  quantization kernels still separate;
- more rows: x quantized per token (kernels/fp8_quant.py, one kernel) or with the static scale, then up to
  TRITON_MAX_M rows the Triton GEMM (kernels/fp8_gemm.py; also for fp32 outputs and shapes _scaled_mm refuses),
  above that torch._scaled_mm with rowwise scales and fast accumulation (CUTLASS fp8 on Hopper; it needs bf16
  out, the weight as a column-major [K, N], K and N multiples of 16): the faster of the two at each size in
  benchmarks/quant_kernels.py on an H200.
On the CPU the torch reference runs (the CPU engine and the tests use it).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
GEMV_MAX_M = 1  # rows up to which the W8A16 GEMV beats quantize + GEMM: its second row cost as much as the first (H200)
TRITON_MAX_M = 128  # rows up to which the Triton FP8 GEMM beat _scaled_mm (H200 run 2: 1.0-1.6x bf16 at 2..64)
SKINNY_MAX_M = 0  # set_skinny_max_m(); at most 32 (kernels/skinny_gemm.py's limit)
GEMM_BACKEND = None  # None: by M as above; "scaled_mm" or "triton" forces one (the benchmark compares them)
FAST_ACCUM = True  # _scaled_mm's use_fast_accum: 5-15% faster from 256 rows on (H200 run 2)


class Fp8Activation(NamedTuple):
    """x already quantized per token by the kernel before the projection (kernels/rmsnorm.py rms_norm_fp8,
    kernels/fp8_silu_quant.py): what fp8_linear takes in place of x, so that no quantization kernel runs between."""
    q: torch.Tensor  # [M, K] float8_e4m3fn
    scale: torch.Tensor  # [M, 1] float32, contiguous
    dtype: torch.dtype  # the activations' dtype: the projection's output dtype


def takes_fp8_input(rows: int, on_cuda: bool) -> bool:
    """Whether fp8_linear quantizes x per token at this many rows (dynamic scales), so that the kernel before it may
    hand it an Fp8Activation instead: always on the CPU (the reference quantizes), on a GPU unless the W8A16 GEMV
    takes those rows (one, with the skinny W8A8 path off)."""
    return not on_cuda or rows <= SKINNY_MAX_M or rows > GEMV_MAX_M


def set_skinny_max_m(m: int) -> None:
    """Rows up to which fp8_linear runs W8A8 through kernels/skinny_gemm.py; set once at start-up (the model
    runner, from the FERRY_FP8_SKINNY_MAX_M knob), before kernels compile or CUDA graphs capture."""
    global SKINNY_MAX_M
    SKINNY_MAX_M = max(0, min(int(m), 32))


def quantize_fp8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (weight [N, K] fp8, weight_scale [N] float32), each row scaled to fill e4m3's range."""
    amax = w.abs().amax(dim=1).float().clamp(min=1e-12)
    scale = amax / FP8_MAX
    q = (w.float() / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def quantize_fp8_per_token(x: torch.Tensor, input_scale: torch.Tensor | None = None):
    """x [M, K] -> (x_fp8 [M, K], scale [M, 1] float32): per row (dynamic), or the one static scale.
    CUDA tensors go through one Triton kernel (kernels/fp8_quant.py), others through the torch reference."""
    if x.is_cuda:
        from kernels.fp8_quant import quantize_fp8_rows
        return quantize_fp8_rows(x, input_scale)
    return quantize_fp8_per_token_ref(x, input_scale)


def quantize_fp8_per_token_ref(x: torch.Tensor, input_scale: torch.Tensor | None = None):
    """The torch reference of quantize_fp8_per_token."""
    if input_scale is None:
        scale = (x.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp(min=1e-12)
    else:
        scale = input_scale.float().reshape(1, 1).expand(x.shape[0], 1)
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def fp8_linear_ref(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                   input_scale: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    xq, xs = quantize_fp8_per_token_ref(x, input_scale)
    out = (xq.float() * xs) @ (weight.float() * weight_scale.float()[:, None]).t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def fp8_linear(x: torch.Tensor | Fp8Activation, weight: torch.Tensor, weight_scale: torch.Tensor,
               input_scale: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] (bf16/fp16/fp32) -> [..., N] in x's dtype; or an Fp8Activation [M, K] -> [M, N] in its dtype."""
    if isinstance(x, Fp8Activation):
        if x.q.shape[0] == 0:
            return x.q.new_empty(0, weight.shape[0], dtype=x.dtype)
        if x.q.is_cuda and x.q.shape[0] <= SKINNY_MAX_M:
            from kernels.skinny_gemm import skinny_gemm
            return skinny_gemm(x.q, weight, bias, weight_scale=weight_scale, x_scale=x.scale, out_dtype=x.dtype)
        return fp8_linear_quantized(x.q, x.scale, weight, weight_scale, bias, x.dtype)
    if not x.is_cuda:
        return fp8_linear_ref(x, weight, weight_scale, input_scale, bias)
    N, K = weight.shape
    x2 = x.reshape(-1, K)
    M = x2.shape[0]
    if M == 0:
        return x.new_empty(*x.shape[:-1], N)
    if M <= GEMV_MAX_M:
        from kernels.fp8_gemv import fp8_gemv
        out = fp8_gemv(x2, weight, weight_scale, bias)
    elif M <= SKINNY_MAX_M:
        from kernels.fp8_quant import quantize_fp8_rows
        from kernels.skinny_gemm import skinny_gemm
        xq, xs = quantize_fp8_rows(x2, input_scale)
        out = skinny_gemm(xq, weight, bias, weight_scale=weight_scale, x_scale=xs, out_dtype=x.dtype)
    else:
        out = fp8_gemm_w8a8(x2, weight, weight_scale, input_scale, bias)
    return out.view(*x.shape[:-1], N)


def fp8_gemm_w8a8(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                  input_scale: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                  backend: str | None = None) -> torch.Tensor:
    """CUDA, x [M, K] -> [M, N] in x's dtype: quantize x, then _scaled_mm or the Triton GEMM."""
    from kernels.fp8_quant import quantize_fp8_rows
    xq, xs = quantize_fp8_rows(x, input_scale)
    return fp8_linear_quantized(xq, xs, weight, weight_scale, bias, x.dtype, backend)


def fp8_linear_quantized(xq: torch.Tensor, xs: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                         bias: torch.Tensor | None, out_dtype: torch.dtype, backend: str | None = None):
    """W8A8 on inputs already quantized (e.g. by kernels.fp8_silu_quant.silu_and_mul_quant_fp8): xq [M, K] e4m3,
    xs [M, 1] float32 contiguous -> [M, N] in out_dtype. CUDA: _scaled_mm or the Triton GEMM; CPU: torch."""
    N, K = weight.shape
    if not xq.is_cuda:
        out = (xq.float() * xs) @ (weight.float() * weight_scale.float()[:, None]).t()
        return (out if bias is None else out + bias.float()).to(out_dtype)
    backend = backend or GEMM_BACKEND or ("triton" if xq.shape[0] <= TRITON_MAX_M else "scaled_mm")
    if backend == "scaled_mm" and out_dtype != torch.float32 and N % 16 == 0 and K % 16 == 0:
        out = torch._scaled_mm(xq, weight.t(), scale_a=xs, scale_b=weight_scale.view(1, N), out_dtype=torch.bfloat16,
                               use_fast_accum=FAST_ACCUM)
        if bias is not None:
            out += bias
        return out if out_dtype == torch.bfloat16 else out.to(out_dtype)
    from kernels.fp8_gemm import fp8_gemm
    return fp8_gemm(xq, weight, xs, weight_scale, bias, out_dtype)
