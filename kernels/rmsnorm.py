"""RMSNorm, optionally fused with the residual add, matching HF LlamaRMSNorm rounding; and the same with its output
quantized per token to e4m3 (rms_norm_fp8) for an FP8 projection after it, so that the 16-bit output never reaches
memory and no quantization kernel runs between the norm and the projection."""

import torch
import triton
import triton.language as tl

from kernels.fp8_quant import store_fp8_row
from kernels.pdl import launch_options, pdl_start

FP8_MAX_H = 16384  # rms_norm_fp8: one row per program, in registers


@triton.jit
def residual_rms_norm_row(x, res_row_ptr, res_out_row_ptr, w_ptr, out_row_ptr, offs, mask, H, eps,
                          HAS_RESIDUAL: tl.constexpr, STORE_SUM: tl.constexpr):
    """One row: x (fp32 holding model-dtype values) plus the residual row, that sum stored (with a residual, or
    when STORE_SUM), then RMSNorm of it stored. Also the tail of kernels/allreduce_rmsnorm.py's kernel."""
    y = residual_rms_norm_values(x, res_row_ptr, res_out_row_ptr, w_ptr, offs, mask, H, eps, HAS_RESIDUAL,
                                 STORE_SUM)
    tl.store(out_row_ptr + offs, y.to(out_row_ptr.dtype.element_ty), mask=mask)


@triton.jit
def residual_rms_norm_values(x, res_row_ptr, res_out_row_ptr, w_ptr, offs, mask, H, eps,
                             HAS_RESIDUAL: tl.constexpr, STORE_SUM: tl.constexpr):
    """residual_rms_norm_row's output row, not stored: fp32 holding model-dtype (res_out's) values, 0 where
    masked."""
    if HAS_RESIDUAL:
        r = tl.load(res_row_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        # HF adds in the model dtype; round the sum the same way before normalising it.
        s = (x + r).to(res_out_row_ptr.dtype.element_ty)
        tl.store(res_out_row_ptr + offs, s, mask=mask)
        x = s.to(tl.float32)
    elif STORE_SUM:
        tl.store(res_out_row_ptr + offs, x.to(res_out_row_ptr.dtype.element_ty), mask=mask)
    var = tl.sum(x * x, axis=0) / H
    h = x * tl.rsqrt(var + eps)
    # HF: weight * hidden.to(input_dtype): round to the input dtype first, then scale.
    h = h.to(res_out_row_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return (h * w).to(res_out_row_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, scale_ptr, res_out_ptr,
    stride_x, stride_r, stride_o, stride_ro, H, eps,
    HAS_RESIDUAL: tl.constexpr, FP8_OUT: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr,
):
    pdl_start(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < H
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    if FP8_OUT:  # out is e4m3, with one scale per row
        y = residual_rms_norm_values(x, res_ptr + row * stride_r, res_out_ptr + row * stride_ro, w_ptr, offs, mask,
                                     H, eps, HAS_RESIDUAL, False)
        store_fp8_row(y, out_ptr + row * stride_o, scale_ptr + row, offs, mask)
    else:
        residual_rms_norm_row(x, res_ptr + row * stride_r, res_out_ptr + row * stride_ro, w_ptr,
                              out_ptr + row * stride_o, offs, mask, H, eps, HAS_RESIDUAL, False)


def _launch(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None, fp8: bool):
    """(out, its per-row scale or None, x + residual or None): the one launch both wrappers share."""
    T, H = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    BLOCK = triton.next_power_of_2(H)
    if fp8:
        assert BLOCK <= FP8_MAX_H, "one row per program in registers"
        out = torch.empty(T, H, dtype=torch.float8_e4m3fn, device=x.device)
        scale = torch.empty(T, 1, dtype=torch.float32, device=x.device)
    else:
        out, scale = torch.empty_like(x, memory_format=torch.contiguous_format), None
    res_out = None
    if residual is not None:
        if residual.stride(1) != 1:
            residual = residual.contiguous()
        res_out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if T > 0:
        # without a residual nothing is stored to res_out: x stands in (its dtype is the one rounded to)
        _rms_norm_kernel[(T,)](
            x, residual if residual is not None else x, weight, out, scale if fp8 else out,
            res_out if res_out is not None else x,
            x.stride(0), residual.stride(0) if residual is not None else 0, out.stride(0),
            res_out.stride(0) if res_out is not None else 0, H, eps,
            HAS_RESIDUAL=residual is not None, FP8_OUT=fp8, BLOCK=BLOCK, num_warps=min(16, max(1, BLOCK // 512)),
            **launch_options(x),
        )
    return out, scale, res_out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """x [T, H]. Returns out, or (out, x + residual) when residual is given."""
    out, _, res_out = _launch(x, weight, eps, residual, fp8=False)
    return out if residual is None else (out, res_out)


def rms_norm_fp8(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """rms_norm, its output quantized per token: Fp8Activation, or (Fp8Activation, x + residual). Equal bit for bit
    to quantize_fp8_rows(rms_norm(...)); one row per program in registers (H up to FP8_MAX_H)."""
    from kernels.fp8_linear import Fp8Activation

    q, scale, res_out = _launch(x, weight, eps, residual, fp8=True)
    act = Fp8Activation(q, scale, x.dtype)
    return act if residual is None else (act, res_out)


def rms_norm_ref(x, weight, eps, residual=None):
    if residual is not None:
        x = x + residual
        res = x
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    out = (weight.float() * h.to(dtype).float()).to(dtype)
    return out if residual is None else (out, res)
