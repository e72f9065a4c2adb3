"""W4A16 matrix-vector product for decode (a few rows): the int4 weight is read once and dequantized in registers.

At batch 1 a projection is a pure read of its weight, and a 4-bit weight is a quarter of the bf16 bytes, so
the kernel must also keep its arithmetic per weight element small or it becomes the limit (an H200 issues
about 33 T lane-instructions/s against ~8 T int4 elements/s at copy bandwidth). Per element it does one
and-or that puts the nibble into the mantissa of 2^23 (ptxas fuses it into one LOP3), a float subtract of
(2^23 + zero) that leaves q - zero exactly, and one FMA with the activation; the group scale is applied once
per run of planes sharing it. No integer-to-float conversion, no reshape. With FEW_SHIFTS (the default) the
nibbles are not shifted down either: nibble i is masked where it is (the upper four after one shift of the
word by 16), giving (q - zero) 16^(i % 4) exactly, and the activation is multiplied by 16^-(i % 4) instead,
once per program for all its rows. Without it, each nibble costs one more shift.

Each program owns BLOCK_N whole rows and streams BLOCK_B blocks of the packed layout (kernels/w4a16.py) per
step: a [BLOCK_N, BLOCK_B, P] tile of words, whose plane i (one shift) pairs with the P contiguous activations
at 8 P b + P i. Rows of x beyond the first repeat the pass over the program's rows (read again from L2).
With PDL (kernels/pdl.py) the first tile of the weight is loaded before waiting for the kernel before. With
PREFETCH (the default) each step loads the next tile before working on its own, so a load is always in flight
(the H200 runs showed the kernel short of warps to hide the memory latency).
"""
import torch
import triton
import triton.language as tl

from kernels.pdl import launch_options
from kernels.w4a16 import W4A16Tensors, plane_words, planes_per_group
from kernels.w4a16_gemv_packed import packed_supported, w4a16_gemv_packed

# H200 run 2 (benchmarks/quant_kernels.py): 8 rows x 8 blocks on 4 warps was the fastest variant at every 8B shape
# (2 warps: fewer instructions per element, 4.6 against 7, but too few warps to hide the latency). Still only
# ~1.1 TB/s of int4 weight: the kernel is bound by its arithmetic (see docs/perf-kernels.md).
DEFAULTS = dict(block_n=8, block_b=8, num_warps=4, num_stages=2, few_shifts=True, prefetch=True)
# "packed": kernels/w4a16_gemv_packed.py (two elements per instruction; 3.0 SASS instructions per element against
# 4.8-6.9) where it takes the call, this file's kernel ("fp32") elsewhere. H200: packed 1.7-2.3x this kernel's speed
# at M = 1 at the 8B shapes (docs/perf-kernels.md).
VARIANT = "packed"

MAGIC = tl.constexpr(8388608.0)  # 2^23: the float whose mantissa bits are the integer OR-ed into it


@triton.jit
def pow2(e):
    """2.0 ** e for a compile-time integer e, as a one-element tensor (its float bits; folded by the compiler)."""
    return tl.full([1], (127 + e) << 23, tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _accumulate(acc, w, x_row, s_rows, z_rows, nmask3, blk0, offs_b3, offs_j3, K, NUM_GROUPS,
                GROUP: tl.constexpr, P: tl.constexpr, PPG: tl.constexpr, FEW_SHIFTS: tl.constexpr):
    """acc [BN, BB, P] += this step's products: w [BN, BB, P] int32 words of blocks blk0 + b."""
    blk = blk0 + offs_b3  # [1, BB, 1]
    if FEW_SHIFTS:
        # (w | M) & (mask | M) = (w & mask) | M: OR-ing the magic in once per word leaves one AND with a single
        # immediate per nibble (ptxas otherwise spends a MOV per nibble putting one of two constants in a register).
        lo = w | 0x4B000000
        hi = (w >> 16) | 0x4B000000  # nibbles 4..7 moved down once per word; masked in place (bits 4 (i % 4))
    for gi in tl.static_range(8 // PPG):
        g = (blk * (8 * P) + gi * (PPG * P)) // GROUP  # [1, BB, 1]: this run of planes' group
        gmask = nmask3 & (g < NUM_GROUPS)
        s = tl.load(s_rows + g, mask=gmask, other=0.0).to(tl.float32)
        z = tl.load(z_rows + g, mask=gmask, other=0.0).to(tl.float32)
        t = tl.zeros(acc.shape, dtype=tl.float32)
        for p in tl.static_range(PPG):
            i = gi * PPG + p
            k = blk * (8 * P) + i * P + offs_j3  # [1, BB, P]
            xi = tl.load(x_row + k, mask=k < K, other=0.0).to(tl.float32)
            if FEW_SHIFTS:
                # (2^23 + q 16^j) - (2^23 + z 16^j) = (q - z) 16^j exactly; x carries the 16^-j (exact too).
                j = i % 4
                if i < 4:
                    src = lo
                else:
                    src = hi
                qf = (src & ((0xF << (4 * j)) | 0x4B000000)).to(tl.float32, bitcast=True)
                t += (xi * pow2(-4 * j)) * (qf - (z * pow2(4 * j) + MAGIC))
            else:
                qf = (((w >> (4 * i)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True)
                t += xi * (qf - (z + MAGIC))
        acc += t * s
    return acc


@triton.jit
def _w4a16_gemv_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, out_ptr, M, N, K, NUM_GROUPS,
                       stride_xm, stride_om, stride_qn, stride_sn,
                       GROUP: tl.constexpr, P: tl.constexpr, PPG: tl.constexpr, HAS_BIAS: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr, FEW_SHIFTS: tl.constexpr,
                       PREFETCH: tl.constexpr, USE_PDL: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < N
    offs_n3 = offs_n.to(tl.int64)[:, None, None]
    nmask3 = nmask[:, None, None]
    offs_b3 = tl.arange(0, BLOCK_B)[None, :, None]
    offs_j3 = tl.arange(0, P)[None, None, :]
    words = qw_ptr + offs_n3 * stride_qn + offs_b3 * P + offs_j3
    s_rows = s_ptr + offs_n3 * stride_sn
    z_rows = z_ptr + offs_n3 * stride_sn
    num_blocks = K // (8 * P)
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
    # Row 0, its first step peeled: the weight tile is loaded before waiting for the kernel before (PDL).
    wmask = nmask3 & (offs_b3 < num_blocks)
    w = tl.load(words, mask=wmask, other=0, eviction_policy="evict_first")
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    acc = tl.zeros([BLOCK_N, BLOCK_B, P], dtype=tl.float32)
    if PREFETCH:  # each step loads the next tile before working on the one it has: a load always in flight
        for blk0 in range(BLOCK_B, num_blocks + BLOCK_B, BLOCK_B):
            wmask = nmask3 & (blk0 + offs_b3 < num_blocks)  # all false on the last step: no memory traffic
            w_next = tl.load(words + blk0 * P, mask=wmask, other=0, eviction_policy="evict_first")
            acc = _accumulate(acc, w, x_ptr, s_rows, z_rows, nmask3, blk0 - BLOCK_B, offs_b3, offs_j3, K,
                              NUM_GROUPS, GROUP, P, PPG, FEW_SHIFTS)
            w = w_next
    else:
        acc = _accumulate(acc, w, x_ptr, s_rows, z_rows, nmask3, 0, offs_b3, offs_j3, K, NUM_GROUPS, GROUP, P,
                          PPG, FEW_SHIFTS)
        for blk0 in range(BLOCK_B, num_blocks, BLOCK_B):
            wmask = nmask3 & (blk0 + offs_b3 < num_blocks)
            w = tl.load(words + blk0 * P, mask=wmask, other=0, eviction_policy="evict_first")
            acc = _accumulate(acc, w, x_ptr, s_rows, z_rows, nmask3, blk0, offs_b3, offs_j3, K, NUM_GROUPS,
                              GROUP, P, PPG, FEW_SHIFTS)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()  # every program has got this far: all are running
    out = tl.sum(tl.sum(acc, axis=2), axis=1)
    if HAS_BIAS:
        out += bias
    tl.store(out_ptr + offs_n, out.to(out_ptr.dtype.element_ty), mask=nmask)
    for m in range(1, M):  # further rows: the same rows of the weight again, now from L2
        x_row = x_ptr + m * stride_xm
        acc = tl.zeros([BLOCK_N, BLOCK_B, P], dtype=tl.float32)
        for blk0 in range(0, num_blocks, BLOCK_B):
            wmask = nmask3 & (blk0 + offs_b3 < num_blocks)
            w = tl.load(words + blk0 * P, mask=wmask, other=0)
            acc = _accumulate(acc, w, x_row, s_rows, z_rows, nmask3, blk0, offs_b3, offs_j3, K, NUM_GROUPS,
                              GROUP, P, PPG, FEW_SHIFTS)
        out = tl.sum(tl.sum(acc, axis=2), axis=1)
        if HAS_BIAS:
            out += bias
        tl.store(out_ptr + m * stride_om + offs_n, out.to(out_ptr.dtype.element_ty), mask=nmask)


def w4a16_gemv(x: torch.Tensor, t: W4A16Tensors, group_size: int, bias: torch.Tensor | None = None,
               **overrides) -> torch.Tensor:
    """x [M, K] (M small) -> [M, N] in x's dtype. With PDL the weight is read before the kernel just before
    this one has finished: it must not be that kernel's output. variant= picks the kernel (VARIANT by default);
    the other keywords are the chosen kernel's block sizes (its DEFAULTS)."""
    M, K = x.shape
    if overrides.pop("variant", VARIANT) == "packed" and packed_supported(x, K, group_size):
        return w4a16_gemv_packed(x, t, group_size, bias, **overrides)
    N = t.qweight.shape[0]
    P = plane_words(K)
    ppg = planes_per_group(K, group_size)
    assert t.qweight.shape[1] * 8 == K and ppg and t.qweight.stride(1) == 1 and t.scales.stride(1) == 1
    cfg = dict(DEFAULTS, **overrides)
    if x.stride(1) != 1:
        x = x.contiguous()
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    block_b = max(1, min(cfg["block_b"], triton.next_power_of_2(K // (8 * P))))
    grid = (triton.cdiv(N, cfg["block_n"]),)
    _w4a16_gemv_kernel[grid](x, t.qweight, t.scales, t.zeros, bias if bias is not None else t.scales, out,
                             M, N, K, t.scales.shape[1], x.stride(0), out.stride(0), t.qweight.stride(0),
                             t.scales.stride(0), GROUP=group_size, P=P, PPG=ppg, HAS_BIAS=bias is not None,
                             BLOCK_N=cfg["block_n"], BLOCK_B=block_b, FEW_SHIFTS=cfg["few_shifts"],
                             PREFETCH=cfg["prefetch"],
                             num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **launch_options(x))
    return out
