"""SiLU-and-multiply for the gated MLP: out = silu(x[:, :I]) * x[:, I:]."""

import torch
import triton
import triton.language as tl

from kernels.pdl import launch_options, pdl_start


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, I, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_start(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < I
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + I + offs, mask=mask).to(tl.float32)
    out = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + row * stride_o + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    T, two_i = x.shape
    I = two_i // 2
    if x.stride(1) != 1:
        x = x.contiguous()
    if out is None:
        out = torch.empty((T, I), dtype=x.dtype, device=x.device)
    if T == 0:
        return out
    BLOCK = min(1024, triton.next_power_of_2(I))
    _silu_and_mul_kernel[(T, triton.cdiv(I, BLOCK))](x, out, x.stride(0), out.stride(0), I, BLOCK=BLOCK, num_warps=4,
                                                       **launch_options(x))
    return out


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    I = x.shape[-1] // 2
    xf = x.float()
    return (torch.nn.functional.silu(xf[:, :I]) * xf[:, I:]).to(x.dtype)
