"""FP8 W8A8 matrix product in Triton: e4m3 activations [M, K] and weight [N, K] on tensor cores (tl.dot, fp32
accumulation), the per-row activation scale and per-column weight scale applied once to the fp32 tile.

The alternative to torch._scaled_mm with rowwise scales (kernels/fp8_linear.py picks by the measurement in
benchmarks/quant_kernels.py); also the path for shapes _scaled_mm refuses (N or K not a multiple of 16) and for
fp32 outputs. The weight tile is loaded [BLOCK_N, BLOCK_K] and transposed, which is the K-major operand
Hopper's fp8 wgmma wants. Configurations from a fixed table by M (no autotuning inside graph capture).
"""
import torch
import triton
import triton.language as tl

from kernels.pdl import launch_options
from kernels.tile_order import config_by_rows, grouped_tile

CONFIGS = [
    (64, dict(block_m=64, block_n=64, block_k=128, num_warps=4, num_stages=4)),
    (256, dict(block_m=128, block_n=64, block_k=128, num_warps=4, num_stages=4)),
    (None, dict(block_m=128, block_n=128, block_k=128, num_warps=8, num_stages=3)),
]
GROUP_M = 8


def config_for(M: int) -> dict:
    return config_by_rows(CONFIGS, M)


@triton.jit
def _fp8_gemm_kernel(a_ptr, b_ptr, as_ptr, bs_ptr, bias_ptr, out_ptr, M, N, K, stride_am, stride_bn, stride_om,
                     HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     GROUP_M: tl.constexpr, USE_PDL: tl.constexpr):
    pid = tl.program_id(0)
    pid_m, pid_n = grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mmask = offs_m < M
    nmask = offs_n < N
    a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am
    b_rows = b_ptr + offs_n.to(tl.int64)[:, None] * stride_bn
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        kmask = k < K
        a = tl.load(a_rows + k[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
        b = tl.load(b_rows + k[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0)
        acc = tl.dot(a, tl.trans(b), acc)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    a_s = tl.load(as_ptr + offs_m, mask=mmask, other=0.0)
    b_s = tl.load(bs_ptr + offs_n, mask=nmask, other=0.0)
    acc = acc * a_s[:, None] * b_s[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])


def fp8_gemm(xq: torch.Tensor, weight: torch.Tensor, x_scale: torch.Tensor, weight_scale: torch.Tensor,
             bias: torch.Tensor | None, out_dtype: torch.dtype, **overrides) -> torch.Tensor:
    """xq [M, K] e4m3, weight [N, K] e4m3 (unit stride along K), x_scale [M, 1] and weight_scale [N] float32
    -> [M, N] in out_dtype."""
    M, K = xq.shape
    N = weight.shape[0]
    assert weight.shape[1] == K and weight.stride(1) == 1 and xq.stride(1) == 1
    cfg = dict(config_for(M), **overrides)
    out = torch.empty(M, N, dtype=out_dtype, device=xq.device)
    grid = (triton.cdiv(M, cfg["block_m"]) * triton.cdiv(N, cfg["block_n"]),)
    _fp8_gemm_kernel[grid](xq, weight, x_scale, weight_scale, bias if bias is not None else weight_scale, out,
                           M, N, K, xq.stride(0), weight.stride(0), out.stride(0), HAS_BIAS=bias is not None,
                           BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], BLOCK_K=cfg["block_k"],
                           GROUP_M=GROUP_M, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                           **launch_options(xq))
    return out
