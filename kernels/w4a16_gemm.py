"""W4A16 matrix product for prefill and large batches: tl.dot on tensor cores, the int4 tile dequantized in
registers, fp32 accumulation.

A program owns a BLOCK_M x BLOCK_N tile of the output and walks K one block of the packed layout
(kernels/w4a16.py) at a time: a [BLOCK_N, P] tile of words, whose plane i (one shift) is the [BLOCK_N, P]
weight for the P contiguous k at 8 P b + P i. Each plane is dequantized without an integer-to-float
conversion (the nibble OR-ed into the mantissa of 2^23, minus 2^23 + zero: exactly q - zero, as in the GEMV;
a small integer, exact in bf16/fp16) and fed to tl.dot against the matching [BLOCK_M, P] activations. With
SCALE_AFTER (BLOCK_M <= 64) the group scale multiplies the fp32 sums once per run of planes that share it
(more exact, no multiply per weight element); larger tiles scale the weight plane instead (one rounding, as a
dequantized weight would have), which saves the second accumulator's registers. With FEW_SHIFTS (small
BLOCK_M, not fp16, whose range is too small for x 16^-3) the nibbles are masked in place as in the GEMV and
the activation tile carries the 16^-j. On the CPU (the interpreter, whose tl.dot misreads bf16 tensors made
inside a kernel) the dot's operands are widened to fp32 after that same rounding.

Configurations come from a fixed table by M (no autotuning: a CUDA graph's capture must not time kernels).
Few output tiles (a few rows, N = 4096) would leave most SMs idle, so K is then split over up to 8 programs
per tile (split_k_for, from the shapes and the SM count) whose fp32 partial sums one small kernel adds up.
"""
import torch
import triton
import triton.language as tl

from kernels.pdl import launch_options
from kernels.split_k_sum import sum_splits
from kernels.tile_order import config_by_rows, grouped_tile
from kernels.w4a16 import W4A16Tensors, plane_words, planes_per_group
from kernels.w4a16_gemv import pow2

# (max M, config): the first whose bound holds. benchmarks/quant_kernels.py times alternatives. kernels/w4a16.py
# sends more than GEMM_MAX_M rows to dequantize + cuBLAS instead (faster there on an H200).
CONFIGS = [
    (16, dict(block_m=16, block_n=32, num_warps=4, num_stages=3)),
    (64, dict(block_m=64, block_n=64, num_warps=4, num_stages=3)),
    (256, dict(block_m=128, block_n=64, num_warps=4, num_stages=3)),
    (None, dict(block_m=128, block_n=128, num_warps=8, num_stages=2)),  # 3 stages: over the 227 KB of smem
]
GROUP_M = 8  # programs ordered in groups of GROUP_M row tiles so a wave reuses weight tiles from L2

_ACTIVATIONS = (torch.bfloat16, torch.float16, torch.float32)


def config_for(M: int) -> dict:
    return config_by_rows(CONFIGS, M)


@triton.jit
def _w4a16_gemm_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, out_ptr, M, N, K, NUM_GROUPS,
                       stride_xm, stride_om, stride_qn, stride_sn,
                       GROUP: tl.constexpr, P: tl.constexpr, PPG: tl.constexpr, HAS_BIAS: tl.constexpr,
                       WIDE: tl.constexpr, FEW_SHIFTS: tl.constexpr, SCALE_AFTER: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr,
                       USE_PDL: tl.constexpr):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)  # SPLIT_K > 1: this program's share of K, summed by kernels/split_k_sum.py
    pid_m, pid_n = grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, P)
    mmask = offs_m < M
    nmask = offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    words = qw_ptr + offs_n.to(tl.int64)[:, None] * stride_qn + offs_j[None, :]
    s_rows = s_ptr + offs_n.to(tl.int64) * stride_sn
    z_rows = z_ptr + offs_n.to(tl.int64) * stride_sn
    act = x_ptr.dtype.element_ty  # WIDE: fp32 activations, or the interpreter (see the docstring)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()  # x is the kernel before's output (compute-bound: nothing to prefetch)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    num_blocks = K // (8 * P)
    per_split = tl.cdiv(num_blocks, SPLIT_K)
    for blk in range(pid_k * per_split, tl.minimum((pid_k + 1) * per_split, num_blocks)):
        w = tl.load(words + blk * P, mask=nmask[:, None], other=0)
        if FEW_SHIFTS:  # the magic OR-ed in once per word, as in the GEMV
            lo = w | 0x4B000000
            hi = (w >> 16) | 0x4B000000
        for gi in tl.static_range(8 // PPG):
            g = (blk * (8 * P) + gi * (PPG * P)) // GROUP  # always < NUM_GROUPS: K is whole blocks
            s = tl.load(s_rows + g, mask=nmask, other=0.0).to(tl.float32)
            z = tl.load(z_rows + g, mask=nmask, other=0.0).to(tl.float32)[:, None]
            if SCALE_AFTER:
                part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for p in tl.static_range(PPG):
                i = gi * PPG + p
                k = blk * (8 * P) + i * P + offs_j
                xi = tl.load(x_rows + k[None, :], mask=mmask[:, None], other=0.0)
                if FEW_SHIFTS:  # as in the GEMV: the nibble masked in place, x times 16^-j (both exact)
                    j = i % 4
                    if i < 4:
                        src = lo
                    else:
                        src = hi
                    qf = (src & ((0xF << (4 * j)) | 0x4B000000)).to(tl.float32, bitcast=True)
                    dq = qf - (z * pow2(4 * j) + 8388608.0)
                    xi = (xi.to(tl.float32) * pow2(-4 * j)).to(act)
                else:
                    qf = (((w >> (4 * i)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True)
                    dq = qf - (z + 8388608.0)  # q - zero: a small integer, exact in any dtype
                if SCALE_AFTER:
                    wq = dq.to(act)
                else:
                    wq = (dq * s[:, None]).to(act)  # large tiles: no second accumulator (registers)
                if WIDE:  # fp32 activations: full precision, not tf32
                    if SCALE_AFTER:
                        part = tl.dot(xi.to(tl.float32), tl.trans(wq.to(tl.float32)), part, input_precision="ieee")
                    else:
                        acc = tl.dot(xi.to(tl.float32), tl.trans(wq.to(tl.float32)), acc, input_precision="ieee")
                else:
                    if SCALE_AFTER:
                        part = tl.dot(xi, tl.trans(wq), part)
                    else:
                        acc = tl.dot(xi, tl.trans(wq), acc)
            if SCALE_AFTER:
                acc += part * s[None, :]  # the group scale once per run of planes, on the fp32 sums
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    if HAS_BIAS and SPLIT_K == 1:
        acc += tl.load(b_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + pid_k.to(tl.int64) * M * N + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])


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
    P = plane_words(K)
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
                             M, N, K, t.scales.shape[1], x.stride(0), out.stride(0), t.qweight.stride(0),
                             t.scales.stride(0), GROUP=group_size, P=P, PPG=ppg, HAS_BIAS=bias is not None,
                             WIDE=x.dtype == torch.float32 or not x.is_cuda,
                             FEW_SHIFTS=cfg.get("few_shifts", cfg["block_m"] <= 32) and x.dtype != torch.float16,
                             SCALE_AFTER=cfg.get("scale_after", cfg["block_m"] <= 64), BLOCK_M=cfg["block_m"],
                             BLOCK_N=cfg["block_n"], GROUP_M=GROUP_M, SPLIT_K=split, num_warps=cfg["num_warps"],
                             num_stages=cfg["num_stages"], **launch_options(x))
    if split > 1:
        sum_splits(part, bias, out)
    return out
