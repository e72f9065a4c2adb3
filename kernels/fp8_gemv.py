"""FP8 weight-only matrix-vector product for decode (W8A16): e4m3 weight [N, K], per-row scale, x kept in 16 bits.

At batch 1 the projection is a read of its weight (half the bf16 bytes); quantizing x as well would add a
kernel and an error for nothing, since the products are summed on CUDA cores in fp32 either way. So this
GEMV reads x as it is: out[m, n] = weight_scale[n] * sum_k x[m, k] * weight[n, k] (+ bias), more accurate than
W8A8 and as fast (benchmarks/quant_kernels.py times both). The structure is kernels/gemv.py's: each program owns
BLOCK_N whole rows and streams BLOCK_K at a time into an fp32 tile summed once at the end; with PDL the first
weight chunk is loaded before waiting for the kernel before. Further rows of x repeat the pass (from L2).
"""
import torch
import triton
import triton.language as tl

from kernels.fp8_gemv_wide import fp8_gemv_wide
from kernels.pdl import launch_options

DEFAULTS = dict(block_n=4, block_k=2048, num_warps=8, num_stages=3, prefetch=False)  # the fastest in H200 run 2
# or "wide": kernels/fp8_gemv_wide.py (weight read as int32 words, PTX conversion): on the H200 it was slower at every
# 8B shape (M = 1: qkv 13.6 against 10.2 us, gate_up 55.3 against 41.1), so the tile kernel stays.
VARIANT = "tile"


@triton.jit
def _fp8_gemv_kernel(x_ptr, w_ptr, ws_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_om, stride_wn,
                     HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PREFETCH: tl.constexpr,
                     USE_PDL: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < N
    rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    offs_k = tl.arange(0, BLOCK_K)
    kmask = offs_k < K
    w = tl.load(rows + offs_k[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0,
                eviction_policy="evict_first")
    if USE_PDL:
        tl.extra.cuda.gdc_wait()  # x is the kernel before's output; the weight above is not
    ws = tl.load(ws_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
    if PREFETCH:  # each step loads the next weight chunk before working on the one it has
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k0 in range(BLOCK_K, K + BLOCK_K, BLOCK_K):
            nxt = k0 + tl.arange(0, BLOCK_K)
            w_next = tl.load(rows + nxt[None, :], mask=nmask[:, None] & (nxt < K)[None, :], other=0.0,
                             eviction_policy="evict_first")  # all masked on the last step: no traffic
            x = tl.load(x_ptr + offs_k, mask=kmask, other=0.0)
            acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
            w, offs_k, kmask = w_next, nxt, nxt < K
    else:
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
    out = tl.sum(acc, axis=1) * ws
    if HAS_BIAS:
        out += bias
    tl.store(out_ptr + offs_n, out.to(out_ptr.dtype.element_ty), mask=nmask)
    for m in range(1, M):  # further rows: the same rows of the weight again, now from L2
        x_row = x_ptr + m * stride_xm
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            kmask = offs_k < K
            w = tl.load(rows + offs_k[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0)
            x = tl.load(x_row + offs_k, mask=kmask, other=0.0)
            acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        out = tl.sum(acc, axis=1) * ws
        if HAS_BIAS:
            out += bias
        tl.store(out_ptr + m * stride_om + offs_n, out.to(out_ptr.dtype.element_ty), mask=nmask)


def fp8_gemv(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None,
             **overrides) -> torch.Tensor:
    """x [M, K] (M small, any float dtype) -> [M, N] in x's dtype; weight [N, K] e4m3 with unit stride along K,
    weight_scale [N] float32. With PDL the weight is read before the kernel before has finished. variant= picks
    the kernel (VARIANT by default); the other keywords are its DEFAULTS' block sizes."""
    M, K = x.shape
    if overrides.pop("variant", VARIANT) == "wide" and K % 4 == 0:
        return fp8_gemv_wide(x, weight, weight_scale, bias, **overrides)
    N = weight.shape[0]
    assert weight.shape[1] == K and weight.stride(1) == 1
    cfg = dict(DEFAULTS, **overrides)
    if x.stride(1) != 1:
        x = x.contiguous()
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(N, cfg["block_n"]),)
    _fp8_gemv_kernel[grid](x, weight, weight_scale, bias if bias is not None else weight_scale, out, M, N, K,
                           x.stride(0), out.stride(0), weight.stride(0), HAS_BIAS=bias is not None,
                           BLOCK_N=cfg["block_n"], BLOCK_K=min(cfg["block_k"], triton.next_power_of_2(K)),
                           PREFETCH=cfg["prefetch"],
                           num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **launch_options(x))
    return out


def fp8_gemv_ref(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """W8A16: x unquantized against the dequantized weight."""
    out = x.float() @ (weight.float() * weight_scale.float()[:, None]).t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)
