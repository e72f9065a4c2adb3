"""W4A16 matrix product for 3 to 128 rows (decode batches, mixed steps; kernels/w4a16.py): tensor cores, int4
dequantized in registers, fp32 accumulation.

The dequantized weight tile is the left operand of the product and the activations the right one: out^T = W x^T.
Why: on Hopper a wgmma reads its right operand from shared memory and may take its left one from registers, so
the dequantized plane goes from the arithmetic straight into the product, and only the activations, loaded
unchanged, are staged in shared memory by the pipeline. With the weight on the right (the earlier kernel), each
plane was first written to shared memory and fenced: 1.3-1.9x slower at every M (docs/perf-kernels.md).

A program owns a BLOCK_N x BLOCK_M tile of out^T and walks K a block of the packed layout (kernels/w4a16.py) at a
time: a [BLOCK_N, P] tile of words whose plane i (4 + j in the upper 16 bits) is the weight for the P contiguous
k at 8 P b + P i. Plane j's nibble is masked in place and OR-ed into the mantissa of 2^23 (2^23 + q 16^j, exact),
minus (2^23 + z 16^j) and times s 16^-j: the dequantized weight (q - z) s rounded once to the activation dtype,
the values kernels/w4a16_dequant.py writes for cuBLAS. On the CPU (the interpreter, whose tl.dot misreads 16-bit
tensors made inside a kernel) the operands are widened to fp32 after that rounding.

Configurations come from a fixed table by M (no autotuning: a CUDA graph's capture must not time kernels). Few
output tiles would leave most SMs idle, so K is then split over up to 8 programs per tile (split_k_for, from the
shapes and the SM count) whose fp32 partial sums one small kernel adds up.
"""
import torch
import triton
import triton.language as tl

from kernels.pdl import launch_options
from kernels.split_k_sum import sum_splits
from kernels.tile_order import config_by_rows, grouped_tile
from kernels.w4a16 import W4A16Tensors, plane_words, planes_per_group

# (max M, config): the first whose bound holds; block_m rows of x (the product's N side), block_n weight rows.
# Each the fastest at its M in `python -m benchmarks.w4a16_gemm` (H200); kernels/w4a16.py sends more than
# GEMM_MAX_M rows to dequantize + cuBLAS instead.
CONFIGS = [
    (16, dict(block_m=16, block_n=64, num_warps=4, num_stages=4)),
    (32, dict(block_m=32, block_n=64, num_warps=4, num_stages=4)),
    (64, dict(block_m=64, block_n=64, num_warps=4, num_stages=3)),
    (None, dict(block_m=128, block_n=128, num_warps=8, num_stages=3)),
]
GROUP_M = 8  # programs ordered in groups of GROUP_M row tiles so a wave reuses weight tiles from L2

_ACTIVATIONS = (torch.bfloat16, torch.float16, torch.float32)


def config_for(M: int) -> dict:
    return config_by_rows(CONFIGS, M)


@triton.jit
def _w4a16_gemm_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, out_ptr, M, N, K,
                       stride_xm, stride_om, stride_qn, stride_sn,
                       GROUP: tl.constexpr, P: tl.constexpr, PPG: tl.constexpr, HAS_BIAS: tl.constexpr,
                       WIDE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
                       SPLIT_K: tl.constexpr, USE_PDL: tl.constexpr):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)  # SPLIT_K > 1: this program's share of K, summed by kernels/split_k_sum.py
    pid_m, pid_n = grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, P)
    mmask = offs_m < M
    nmask = offs_n < N
    xt = x_ptr + offs_m.to(tl.int64)[None, :] * stride_xm + offs_j[:, None]  # [P, BLOCK_M]: one plane's x^T
    words = qw_ptr + offs_n.to(tl.int64)[:, None] * stride_qn + offs_j[None, :]  # [BLOCK_N, P]
    s_rows = s_ptr + offs_n.to(tl.int64) * stride_sn
    z_rows = z_ptr + offs_n.to(tl.int64) * stride_sn
    act = x_ptr.dtype.element_ty
    RUN: tl.constexpr = PPG if PPG < 4 else 4  # planes of a half-block that share one scale
    if USE_PDL:
        tl.extra.cuda.gdc_wait()  # x is the kernel before's output (compute-bound: nothing to prefetch)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    num_blocks = K // (8 * P)
    per_split = tl.cdiv(num_blocks, SPLIT_K)
    for b in range(pid_k * per_split, tl.minimum((pid_k + 1) * per_split, num_blocks)):
        w = tl.load(words + b * P, mask=nmask[:, None], other=0)
        # The two halves unrolled, each with a constant shift: a shift by a loop-carried amount (stepping half a
        # block at a time, which would stage half the activations) stops Triton from computing the plane in the
        # product's register layout, and it goes through shared memory instead (tests/kernels/test_sm90_compile.py).
        for hh in tl.static_range(2):
            if hh == 0:
                half = w
            else:
                half = w >> 16  # planes 4 + j in bits 4 j .. 4 j + 3
            k0 = b * (8 * P) + hh * (4 * P)
            for r in tl.static_range(4 // RUN):
                g = (k0 + r * (RUN * P)) // GROUP  # always < K // GROUP: K is whole blocks
                s = tl.load(s_rows + g, mask=nmask, other=0.0).to(tl.float32)[:, None]
                z = tl.load(z_rows + g, mask=nmask, other=0.0).to(tl.float32)[:, None]
                for p in tl.static_range(RUN):
                    j = r * RUN + p
                    xi = tl.load(xt + (k0 + j * P), mask=mmask[None, :], other=0.0)
                    # one LOP3, one FADD, one FMUL per element, no shift (the docstring); 16^j as a constant
                    qf = ((half & (0xF << (4 * j))) | 0x4B000000).to(tl.float32, bitcast=True)
                    wq = ((qf - (z * (1 << (4 * j)) + 8388608.0)) * (s * (1.0 / (1 << (4 * j))))).to(act)
                    if WIDE:  # fp32 activations: full precision, not tf32
                        acc = tl.dot(wq.to(tl.float32), xi.to(tl.float32), acc, input_precision="ieee")
                    else:
                        acc = tl.dot(wq, xi, acc)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    if HAS_BIAS and SPLIT_K == 1:
        acc += tl.load(b_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)[:, None]
    out = out_ptr + pid_k.to(tl.int64) * M * N + offs_m.to(tl.int64)[None, :] * stride_om + offs_n[:, None]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=nmask[:, None] & mmask[None, :])


_sm_count: dict[int, int] = {}


def split_k_for(M: int, N: int, K: int, cfg: dict, device: torch.device) -> int:
    """Splits of K for few output tiles (small M, small N): enough programs for two per SM, each split at
    least 4 blocks of K. From the shapes and the GPU's SM count only (CUDA-graph safe)."""
    if device.type != "cuda":
        return 1
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _sm_count:
        _sm_count[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    tiles = triton.cdiv(M, cfg["block_m"]) * triton.cdiv(N, cfg["block_n"])
    split = 1
    while split < 8 and tiles * split < 2 * _sm_count[idx] and K // (8 * plane_words(K)) >= 8 * split:
        split *= 2
    return split


def w4a16_gemm(x: torch.Tensor, t: W4A16Tensors, group_size: int, bias: torch.Tensor | None = None,
               **overrides) -> torch.Tensor:
    """x [M, K] -> [M, N] in x's dtype (bf16, fp16 or fp32)."""
    M, K = x.shape
    N = t.qweight.shape[0]
    ppg = planes_per_group(K, group_size)
    assert t.qweight.shape[1] * 8 == K and ppg and x.dtype in _ACTIVATIONS
    cfg = dict(config_for(M), **overrides)
    if x.stride(1) != 1:
        x = x.contiguous()
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    split = cfg.get("split_k") or split_k_for(M, N, K, cfg, x.device)
    part = out if split == 1 else torch.empty(split, M, N, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(M, cfg["block_m"]) * triton.cdiv(N, cfg["block_n"]), split)
    _w4a16_gemm_kernel[grid](x, t.qweight, t.scales, t.zeros, bias if bias is not None else t.scales, part,
                             M, N, K, x.stride(0), out.stride(0), t.qweight.stride(0), t.scales.stride(0),
                             GROUP=group_size, P=plane_words(K), PPG=ppg, HAS_BIAS=bias is not None,
                             WIDE=x.dtype == torch.float32 or not x.is_cuda, BLOCK_M=cfg["block_m"],
                             BLOCK_N=cfg["block_n"], GROUP_M=GROUP_M, SPLIT_K=split, num_warps=cfg["num_warps"],
                             num_stages=cfg["num_stages"], **launch_options(x))
    if split > 1:
        sum_splits(part, bias, out)
    return out
