"""SiLU-and-multiply fused with per-token FP8 quantization: the down projection's input straight to e4m3.

For an FP8 MLP at more than GEMV rows, silu_and_mul writes a 16-bit [T, I] tensor that kernels/fp8_quant.py
reads back to quantize: this kernel does both in one pass (one program per row, the row in registers), so the
16-bit intermediate never reaches memory and one launch goes. The product is rounded to the activation dtype
before quantizing, so the result equals quantize_fp8_rows(silu_and_mul(x)) bit for bit.
"""
import torch
import triton
import triton.language as tl

from kernels.fp8_quant import store_fp8_row
from kernels.pdl import launch_options, pdl_start

MAX_I = 16384  # one row per program, in registers


@triton.jit
def _silu_mul_quant_kernel(x_ptr, q_ptr, s_ptr, I, stride_x, stride_q, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    pdl_start(USE_PDL)
    offs = tl.arange(0, BLOCK)
    mask = offs < I
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + I + offs, mask=mask, other=0.0).to(tl.float32)
    y = (gate / (1.0 + tl.exp(-gate)) * up).to(x_ptr.dtype.element_ty).to(tl.float32)
    store_fp8_row(y, q_ptr + row * stride_q, s_ptr + row, offs, mask)


def silu_and_mul_quant_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, 2 I] (gate | up) -> (silu(gate) * up as e4m3 [T, I], per-row scale [T, 1] float32); I <= 16384."""
    T, two_i = x.shape
    I = two_i // 2
    if x.stride(1) != 1:
        x = x.contiguous()
    q = torch.empty(T, I, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(T, 1, dtype=torch.float32, device=x.device)
    block = triton.next_power_of_2(I)
    assert block <= MAX_I, "one row per program in registers"
    if T:
        _silu_mul_quant_kernel[(T,)](x, q, scale, I, x.stride(0), q.stride(0), BLOCK=block,
                                     num_warps=4 if block <= 2048 else (8 if block <= 8192 else 16),
                                     **launch_options(x))
    return q, scale
