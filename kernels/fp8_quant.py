"""Per-token FP8 (e4m3) activation quantization in one kernel: each row's amax, its scale, the quantized row.

One program per row. A row that fits (K up to 16,384) is read once into registers; a longer one is read twice
(amax, then quantize), the second time from L2. Divisions round to nearest (div_rn) so that scales and values
match the torch reference (kernels/fp8_linear.py quantize_fp8_per_token_ref) bit for bit on a GPU.
"""
import torch
import triton
import triton.language as tl

from kernels.pdl import launch_options, pdl_start

FP8_MAX = tl.constexpr(448.0)  # a global a kernel reads must be a constexpr
ONE_PASS_MAX_K = 16384


@triton.jit
def store_fp8_row(y, q_row_ptr, scale_ptr, offs, mask):
    """One row y (fp32, zero where masked) in registers -> its per-token scale and e4m3 values, stored: the rule
    every kernel that quantizes activations shares (this one, kernels/rmsnorm.py, kernels/fp8_silu_quant.py)."""
    scale = tl.maximum(tl.math.div_rn(tl.max(tl.abs(y), axis=0), FP8_MAX), 1e-12)
    q = tl.clamp(tl.math.div_rn(y, scale), -FP8_MAX, FP8_MAX)
    tl.store(q_row_ptr + offs, q.to(q_row_ptr.dtype.element_ty), mask=mask)
    tl.store(scale_ptr, scale)


@triton.jit
def _quant_fp8_kernel(x_ptr, q_ptr, s_ptr, in_scale_ptr, K, stride_xm, stride_qm, STATIC: tl.constexpr,
                      ONE_PASS: tl.constexpr, BLOCK_K: tl.constexpr, USE_PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    pdl_start(USE_PDL)
    x_row = x_ptr + row * stride_xm
    q_row = q_ptr + row * stride_qm
    if ONE_PASS:
        offs = tl.arange(0, BLOCK_K)
        kmask = offs < K
        x = tl.load(x_row + offs, mask=kmask, other=0.0).to(tl.float32)
        if STATIC:
            scale = tl.load(in_scale_ptr).to(tl.float32)
            q = tl.clamp(tl.math.div_rn(x, scale), -FP8_MAX, FP8_MAX)
            tl.store(q_row + offs, q.to(q_ptr.dtype.element_ty), mask=kmask)
            tl.store(s_ptr + row, scale)
        else:
            store_fp8_row(x, q_row, s_ptr + row, offs, kmask)
    else:
        if STATIC:
            scale = tl.load(in_scale_ptr).to(tl.float32)
        else:
            amax = tl.zeros([BLOCK_K], dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                offs = k0 + tl.arange(0, BLOCK_K)
                x = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
                amax = tl.maximum(amax, tl.abs(x))
            scale = tl.maximum(tl.math.div_rn(tl.max(amax, axis=0), FP8_MAX), 1e-12)
        for k0 in range(0, K, BLOCK_K):
            offs = k0 + tl.arange(0, BLOCK_K)
            kmask = offs < K
            x = tl.load(x_row + offs, mask=kmask, other=0.0).to(tl.float32)
            q = tl.clamp(tl.math.div_rn(x, scale), -FP8_MAX, FP8_MAX)
            tl.store(q_row + offs, q.to(q_ptr.dtype.element_ty), mask=kmask)
        tl.store(s_ptr + row, scale)


def quantize_fp8_rows(x: torch.Tensor, input_scale: torch.Tensor | None = None, block_k: int | None = None):
    """x [M, K] -> (x_fp8 [M, K] float8_e4m3fn, scale [M, 1] float32 contiguous): per row, or the static scale
    (a one-element tensor) repeated."""
    M, K = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    q = torch.empty(M, K, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(M, 1, dtype=torch.float32, device=x.device)
    one_pass = block_k is None and K <= ONE_PASS_MAX_K
    block = triton.next_power_of_2(K) if one_pass else (block_k or 4096)
    warps = 4 if block <= 2048 else (8 if block <= 8192 else 16)
    if M:
        _quant_fp8_kernel[(M,)](x, q, scale, input_scale if input_scale is not None else scale, K, x.stride(0),
                                q.stride(0), STATIC=input_scale is not None, ONE_PASS=one_pass, BLOCK_K=block,
                                num_warps=warps, **launch_options(x))
    return q, scale
