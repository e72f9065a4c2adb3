"""W4A16 weight dequantized to a dense [N, K] matrix on the GPU, for large batches: cuBLAS then does the product.

At prefill sizes the product is compute-bound and cuBLAS's bf16 GEMM is the fastest there is; writing the dense
weight first costs one pass (read 0.5 B, write 2 B per element: ~75 us for the 8B model's gate_up on an H200),
small next to the GEMM from a few hundred rows on. kernels/w4a16.py picks this path above GEMM_MAX_M rows.
"""
import torch
import triton
import triton.language as tl

from kernels.pdl import launch_options
from kernels.w4a16 import W4A16Tensors, plane_words, planes_per_group


@triton.jit
def _dequant_kernel(qw_ptr, s_ptr, z_ptr, out_ptr, N, K, stride_qn, stride_sn, stride_on, GROUP: tl.constexpr,
                    P: tl.constexpr, PPG: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
                    USE_PDL: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    blk = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    num_blocks = K // (8 * P)
    n3 = offs_n.to(tl.int64)[:, None, None]
    b3 = blk[None, :, None]
    j3 = tl.arange(0, P)[None, None, :]
    mask = (offs_n < N)[:, None, None] & (b3 < num_blocks)
    w = tl.load(qw_ptr + n3 * stride_qn + b3 * P + j3, mask=mask, other=0)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()  # the output buffer may still be read by the kernel before
    for gi in tl.static_range(8 // PPG):
        g = (b3 * (8 * P) + gi * (PPG * P)) // GROUP
        s = tl.load(s_ptr + n3 * stride_sn + g, mask=mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + n3 * stride_sn + g, mask=mask, other=0.0).to(tl.float32)
        for p in tl.static_range(PPG):
            i = gi * PPG + p
            qf = (((w >> (4 * i)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True)
            k = b3 * (8 * P) + i * P + j3
            tl.store(out_ptr + n3 * stride_on + k, ((qf - (z + 8388608.0)) * s).to(out_ptr.dtype.element_ty),
                     mask=mask)


DEFAULTS = dict(block_n=16, block_b=4, num_warps=4)  # rows, blocks of K per program (benchmarks/w4a16_gemm.py)


def w4a16_dequantize_dense(t: W4A16Tensors, group_size: int, dtype: torch.dtype, **overrides) -> torch.Tensor:
    """The dense [N, K] weight in `dtype` (CUDA): the reference's values, rounded once."""
    N, words = t.qweight.shape
    K = words * 8
    P = plane_words(K)
    ppg = planes_per_group(K, group_size)
    assert ppg
    out = torch.empty(N, K, dtype=dtype, device=t.qweight.device)
    cfg = dict(DEFAULTS, **overrides)
    grid = (triton.cdiv(N, cfg["block_n"]), triton.cdiv(K // (8 * P), cfg["block_b"]))
    _dequant_kernel[grid](t.qweight, t.scales, t.zeros, out, N, K, t.qweight.stride(0), t.scales.stride(0),
                          out.stride(0), GROUP=group_size, P=P, PPG=ppg, BLOCK_N=cfg["block_n"],
                          BLOCK_B=cfg["block_b"], num_warps=cfg["num_warps"], **launch_options(t.qweight))
    return out
