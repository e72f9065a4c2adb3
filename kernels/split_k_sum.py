"""The second kernel of a split-K product: out = sum of the fp32 partial sums part[s] (+ bias), in out's dtype.

A product with few output tiles splits K over several programs per tile so that every SM reads (kernels/
w4a16_gemm.py, kernels/skinny_gemm.py); each writes its fp32 partial sums to part[s], and this adds them.
"""
import torch
import triton
import triton.language as tl

from kernels.pdl import launch_options

BLOCK = 1024


@triton.jit
def _split_k_sum_kernel(part_ptr, b_ptr, out_ptr, MN, N, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr,
                        BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    acc = tl.load(part_ptr + offs, mask=mask, other=0.0)
    for s in tl.static_range(1, SPLIT_K):
        acc += tl.load(part_ptr + s * MN + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def sum_splits(part: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """part [S, M, N] float32 (contiguous), out [M, N] (contiguous) <- sum over S (+ bias [N])."""
    splits, m, n = part.shape
    _split_k_sum_kernel[(triton.cdiv(m * n, BLOCK),)](part, bias if bias is not None else part, out, m * n, n,
                                                      SPLIT_K=splits, HAS_BIAS=bias is not None, BLOCK=BLOCK,
                                                      num_warps=4, **launch_options(out))
    return out
