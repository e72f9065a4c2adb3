"""Matrix-vector product for one-token decode: out[n] = sum_k x[k] * W[n, k] (+ bias), W as nn.Linear holds it.

At batch 1 a projection is a pure read of its weight. cuBLAS reads the large ones near copy speed but
the small ones (a tensor-parallel shard's q/k/v and o projections, 16-25 MB) well below it, and adds a
split-K reduction kernel to some. Here each program owns BLOCK_N whole rows of W and streams them in
BLOCK_K chunks, multiplying into an fp32 tile that it sums once at the end: no second kernel, and
enough programs (N / BLOCK_N) in flight to keep every SM's loads busy. Launched with PDL (kernels/pdl.py),
the programs start during the kernel before (a norm, the all-reduce, attention) and read their first chunk of
the weight, which nothing writes, before waiting for that kernel's output x.
"""

import torch
import triton
import triton.language as tl

from kernels.pdl import launch_options

# Swept on an H100 with benchmarks/gemv.py --sweep (docs/perf-kernels.md): within 1 us of each shape's best.
DEFAULTS = dict(block_n=2, block_k=2048, num_warps=8, num_stages=3)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, out_ptr, N, K, stride_wn,
                 HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_PDL: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < N
    rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    offs_k = tl.arange(0, BLOCK_K)
    kmask = offs_k < K
    w = tl.load(rows + offs_k[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0,
                eviction_policy="evict_first")  # read once: keep it out of the way of the activations
    if USE_PDL:
        tl.extra.cuda.gdc_wait()  # x is the kernel before's output; the weight above is not
    x = tl.load(x_ptr + offs_k, mask=kmask, other=0.0)
    acc = w.to(tl.float32) * x.to(tl.float32)[None, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < K
        w = tl.load(rows + offs_k[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0,
                    eviction_policy="evict_first")
        x = tl.load(x_ptr + offs_k, mask=kmask, other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()  # every program has got this far: all are running
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(b_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs_n, out.to(out_ptr.dtype.element_ty), mask=nmask)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, **overrides) -> torch.Tensor:
    """x [1, K] (or [K]), weight [N, K] with unit stride along K -> [1, N] (or [N]) in x's dtype. With PDL the
    weight is read before the kernel just before this one has finished: it must not be that kernel's output."""
    N, K = weight.shape
    assert x.shape[-1] == K and x.numel() == K and weight.stride(1) == 1
    cfg = dict(DEFAULTS, **overrides)
    xv = x.reshape(K)
    if xv.stride(0) != 1:
        xv = xv.contiguous()
    out = torch.empty(N, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(N, cfg["block_n"]),)
    _gemv_kernel[grid](xv, weight, bias if bias is not None else weight, out, N, K, weight.stride(0),
                       HAS_BIAS=bias is not None, BLOCK_N=cfg["block_n"], BLOCK_K=min(cfg["block_k"],
                       triton.next_power_of_2(K)), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                       **launch_options(x))
    return out.view(*x.shape[:-1], N)


def gemv_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    out = x.float() @ weight.float().t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)
