"""Projections of a few rows (decode at batch 2 to MAX_M): out[M, N] = x[M, K] @ W[N, K]^T (+ bias), W read once.

At a few rows a projection is still a read of its weight, but cuBLAS reads it ~10% slower than kernels/gemv.py
does at one row (docs/perf-kernels.md), and a decode step at batch 4-32 is almost all projections. Here the
operands are swapped so the weight is the tensor-core product's tall side: each program computes the
[BLOCK_N, BLOCK_M] tile W_tile @ x^T_tile, with the rows of x padded to BLOCK_M (16 or 32, masked loads: no
copy), and Triton pipelines the weight's loads num_stages deep. Few output tiles (N = 4096 at 64 a tile is 64
programs for 132 SMs) split K: each split writes fp32 partial sums and kernels/split_k_sum.py adds them. Launched with
PDL the programs are resident while the kernel before ends; they wait before the first load (the pipelined
prologue loads x with the weight). On the CPU (the interpreter) the operands are widened to fp32 for the dot.

MAX_M is set once at start-up by the model runner (the FERRY_SKINNY_GEMM_MAX_M knob; 0 turns it off).
"""
import torch
import triton
import triton.language as tl

from kernels.pdl import launch_options
from kernels.split_k_sum import sum_splits

MAX_M = 0  # set_max_m() sets it at start-up (the knob defaults to 32); 0: never used


def config_for(n: int, k: int, weight_bytes: int = 2) -> dict:
    """From the H200 sweep (benchmarks/skinny_gemm.py, docs/perf-kernels.md): 128-wide tiles for the wide
    projections (gate_up, the LM head), 64 otherwise; K split in two when there are fewer than 80 tiles (N = 4096:
    o, down), where the second kernel costs less than the idle SMs. A one-byte (e4m3) weight takes K blocks twice
    as long, so that a load moves the same bytes (not yet swept: benchmarks/fp8_skinny.py)."""
    block_n = 128 if n >= 16384 else 64
    block_k = 256 if weight_bytes == 1 else 128
    split = 2 if triton.cdiv(n, block_n) < 80 and k % (2 * block_k) == 0 else 1
    return dict(block_n=block_n, block_k=block_k, split_k=split, num_warps=4, num_stages=3 if block_n == 128 else 5)


def set_max_m(m: int) -> None:
    """The most rows a projection sends here (2..32); set once, before kernels compile or graphs capture."""
    global MAX_M
    MAX_M = max(0, min(int(m), 32))


@triton.jit
def _skinny_kernel(x_ptr, xs_ptr, w_ptr, ws_ptr, b_ptr, out_ptr, part_ptr, M, N, K, K_PER_SPLIT, stride_xm,
                   stride_wn, stride_om, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, W_FP8: tl.constexpr, X_FP8: tl.constexpr,
                   DOT_F16: tl.constexpr, WIDEN: tl.constexpr, USE_PDL: tl.constexpr):
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    nmask, mmask = offs_n < N, offs_m < M
    k_start = pid_k * K_PER_SPLIT
    w_ptrs = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn + (k_start + offs_k)[None, :]
    x_ptrs = x_ptr + offs_m[None, :] * stride_xm + (k_start + offs_k)[:, None]
    if USE_PDL:
        tl.extra.cuda.gdc_wait()  # x is the kernel before's output
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for k0 in range(0, K_PER_SPLIT, BLOCK_K):
        kmask = (k_start + k0 + offs_k) < K
        w = tl.load(w_ptrs, mask=nmask[:, None] & kmask[None, :], other=0.0, eviction_policy="evict_first")
        xt = tl.load(x_ptrs, mask=kmask[:, None] & mmask[None, :], other=0.0)
        if WIDEN:  # the interpreter's tl.dot misreads bf16 operands: products of 16-bit values are exact in fp32
            acc = tl.dot(w.to(tl.float32), xt.to(tl.float32), acc, input_precision="ieee")
        elif X_FP8:  # W8A8: both operands e4m3, straight from shared memory into the tensor cores
            acc = tl.dot(w, xt, acc)
        elif DOT_F16:  # e4m3 -> fp16 is one instruction per pair (exact); x's bf16 -> fp16 is per x element only
            acc = tl.dot(w.to(tl.float16), xt.to(tl.float16), acc)
        elif W_FP8:
            acc = tl.dot(w.to(xt.dtype), xt, acc)
        else:
            acc = tl.dot(w, xt, acc)
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    if W_FP8:  # the row scale is linear in the sums: once here, before any split is added
        acc *= tl.load(ws_ptr + offs_n, mask=nmask, other=0.0)[:, None]
    if X_FP8:  # and so is each row of x's
        acc *= tl.load(xs_ptr + offs_m, mask=mmask, other=0.0)[None, :]
    omask = nmask[:, None] & mmask[None, :]
    if SPLIT:
        parts = part_ptr + pid_k * M * N + offs_m[None, :] * N + offs_n[:, None]
        tl.store(parts, acc, mask=omask)
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)[:, None]
        outs = out_ptr + offs_m[None, :] * stride_om + offs_n[:, None]
        tl.store(outs, acc.to(out_ptr.dtype.element_ty), mask=omask)


def skinny_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                weight_scale: torch.Tensor | None = None, dot_f16: bool = False, x_scale: torch.Tensor | None = None,
                out_dtype: torch.dtype | None = None, **overrides) -> torch.Tensor:
    """x [M, K] (M <= 32), weight [N, K] with unit stride along K -> [M, N] in x's dtype (as F.linear).
    An e4m3 weight comes with weight_scale [N] float32. W8A16 (x in 16 bits, not quantized): the weight is widened
    to x's dtype, or with dot_f16 both go to fp16, whose conversion from e4m3 is cheaper but whose range, 65504, is
    narrower than bf16's. W8A8: x already e4m3 with x_scale [M] (or [M, 1]) float32, and out_dtype given.
    Keywords override config_for's block_n, block_k, split_k, num_warps, num_stages."""
    M, K = x.shape
    N = weight.shape[0]
    assert weight.shape[1] == K and weight.stride(1) == 1 and M <= 32
    w_fp8, x_fp8 = weight_scale is not None, x_scale is not None
    assert w_fp8 or not x_fp8
    cfg = dict(config_for(N, K, 1 if w_fp8 else 2), **overrides)
    if x.stride(1) != 1:
        x = x.contiguous()
    block_m = 16 if M <= 16 else 32
    split = cfg["split_k"]
    k_per_split = triton.cdiv(triton.cdiv(K, split), cfg["block_k"]) * cfg["block_k"]
    split = triton.cdiv(K, k_per_split)
    out = torch.empty(M, N, dtype=out_dtype if x_fp8 else x.dtype, device=x.device)
    part = torch.empty(split, M, N, dtype=torch.float32, device=x.device) if split > 1 else out
    opts = launch_options(x)
    _skinny_kernel[(triton.cdiv(N, cfg["block_n"]), split)](
        x, x_scale if x_fp8 else out, weight, weight_scale if w_fp8 else out, bias if bias is not None else out, out,
        part, M, N, K, k_per_split, x.stride(0), weight.stride(0), out.stride(0), HAS_BIAS=bias is not None,
        SPLIT=split > 1, BLOCK_M=block_m, BLOCK_N=cfg["block_n"], BLOCK_K=cfg["block_k"], W_FP8=w_fp8,
        X_FP8=x_fp8, DOT_F16=dot_f16 and w_fp8 and not x_fp8 and x.is_cuda, WIDEN=not x.is_cuda,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **opts)
    if split > 1:
        sum_splits(part, bias, out)
    return out
