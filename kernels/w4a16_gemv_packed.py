"""W4A16 GEMV with packed 16-bit arithmetic (Marlin-style): two weight elements per instruction.

The fp32 GEMV (kernels/w4a16_gemv.py) spends at least three instructions per weight element (LOP3 into the
mantissa of 2^23, FADD of the zero, FFMA), and an H200 issues only about two per element at copy bandwidth.
Here one 32-bit word of the packed layout (kernels/w4a16.py: nibble i of word j of a block is plane i) is
handled by one block of PTX (WORD_ASM), two elements per instruction:
- `lop3` puts nibbles i and i + 4 (bits 4i and 4i + 16, after a shift of the word by 4i) into the mantissas of
  two 16-bit copies of MAGIC (bf16 0x4300 = 128, fp16 0x6400 = 1024; one ulp is 1 there): (MAGIC + q_i,
  MAGIC + q_{i+4}); a packed sub of (MAGIC + z_A, MAGIC + z_B) leaves q - z exactly (an integer in -16..15);
- a packed fma with the activation pair (x of plane i, x of plane i + 4) sums the word's 4 pairs in 16 bits
  (4 roundings at 2^-9 for bf16, 2^-12 for fp16: about the rounding of the dense bf16 weight);
- the two 16-bit partial sums (group A = planes 0..3, group B = planes 4..7) become fp32 and are scaled and
  summed in fp32 (two FFMA per word).
That is 19 instructions per 8 elements (3 SHF, 4 LOP3, 4 HADD2, 4 HFMA2, 2 conversions, 2 FFMA). Each thread
holds all BLOCK_N rows of its words, so the activation pairs (loaded and packed once per step) serve every row.

Needs planes_per_group 4 or 8 (one zero per half word: group 128 or larger, the usual case) and bf16 or fp16
activations; w4a16_gemv falls back to the fp32 kernel otherwise. The PTX does not run in the Triton interpreter:
there (ASM=False) the same words, pairs and groups go through plain Triton arithmetic in fp32, so the tests check
the indexing; the bit trick itself is checked in numpy (tests/kernels/test_w4a16_packed.py) and the PTX by
compiling for sm_90 (benchmarks/compile_sm90.py).
"""
import torch
import triton
import triton.language as tl

from kernels.pdl import launch_options
from kernels.w4a16 import W4A16Tensors, plane_words, planes_per_group

# H200 (benchmarks/quant_kernels.py --quick, 2026-12-01): 8 rows x 8 blocks on 2 warps was the fastest at every 8B
# shape at M = 1 (qkv 7.1, o 5.6, gate_up 23.2, down 13.2 us: 1.7-2.3x bf16's GEMV); 8 x 16 on 4 warps 10-25% slower.
DEFAULTS = dict(block_n=8, block_b=8, num_warps=2, num_stages=2)

MAGIC_BITS = {torch.bfloat16: 0x4300, torch.float16: 0x6400}  # 128.0 and 1024.0: ulp 1, nibble fits the mantissa


def word_asm(kind: str) -> str:
    """The PTX for one word: $0, $1 <- fp32 bits of the group-A and group-B partial sums; $2 the word, $3..$6 the
    activation pairs of planes (0, 4) .. (3, 7), $7 the packed (MAGIC + z_A, MAGIC + z_B). kind: bf16 or f16."""
    magic = "0x43004300" if kind == "bf16" else "0x64006400"
    lines = ["{", ".reg .b32 q1, q2, q3, t0, t1, t2, t3, acc;",
             "shr.u32 q1, $2, 4;", "shr.u32 q2, $2, 8;", "shr.u32 q3, $2, 12;"]
    for i, src in enumerate(["$2", "q1", "q2", "q3"]):
        lines.append(f"lop3.b32 t{i}, {src}, 0x000f000f, {magic}, 0xea;")  # (src & mask) | magic
    for i in range(4):
        lines.append(f"sub.rn.{kind}x2 t{i}, t{i}, $7;")  # exact: q - z
    lines.append(f"mul.rn.{kind}x2 acc, t0, $3;")
    for i in range(1, 4):
        lines.append(f"fma.rn.{kind}x2 acc, t{i}, ${3 + i}, acc;")
    if kind == "bf16":  # a bf16 in the top half of a word is that fp32
        lines += ["shl.b32 $0, acc, 16;", "and.b32 $1, acc, 0xffff0000;"]
    else:
        lines += ["{ .reg .b16 lo, hi; .reg .f32 flo, fhi; mov.b32 {lo, hi}, acc;",
                  "cvt.f32.f16 flo, lo; cvt.f32.f16 fhi, hi; mov.b32 $0, flo; mov.b32 $1, fhi; }"]
    return "\n".join(lines + ["}"])


WORD_ASM_BF16 = tl.constexpr(word_asm("bf16"))
WORD_ASM_F16 = tl.constexpr(word_asm("f16"))


@triton.jit
def _pack_pair(lo, hi):
    """Two 16-bit floats -> one int32 word (lo in the low half), as PTX packed operands are laid out."""
    lo16 = lo.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    hi16 = hi.to(tl.int16, bitcast=True).to(tl.int32) << 16
    return lo16 | hi16


@triton.jit
def _word_partials(w, x0, x1, x2, x3, xs0, xs1, xs2, xs3, zp, z_a, z_b, ASM: tl.constexpr, F16: tl.constexpr):
    """Per word: (sum over planes 0..3 of (q - z_A) x, the same over planes 4..7 with z_B), fp32."""
    if ASM:
        if F16:
            pa, pb = tl.inline_asm_elementwise(WORD_ASM_F16, "=r,=r,r,r,r,r,r,r", [w, xs0, xs1, xs2, xs3, zp],
                                               dtype=(tl.int32, tl.int32), is_pure=True, pack=1)
        else:
            pa, pb = tl.inline_asm_elementwise(WORD_ASM_BF16, "=r,=r,r,r,r,r,r,r", [w, xs0, xs1, xs2, xs3, zp],
                                               dtype=(tl.int32, tl.int32), is_pure=True, pack=1)
        return pa.to(tl.float32, bitcast=True), pb.to(tl.float32, bitcast=True)
    else:  # the interpreter: the same pairs, in fp32
        pa = ((w & 0xF).to(tl.float32) - z_a) * x0[0] + (((w >> 4) & 0xF).to(tl.float32) - z_a) * x1[0] \
            + (((w >> 8) & 0xF).to(tl.float32) - z_a) * x2[0] + (((w >> 12) & 0xF).to(tl.float32) - z_a) * x3[0]
        pb = (((w >> 16) & 0xF).to(tl.float32) - z_b) * x0[1] + (((w >> 20) & 0xF).to(tl.float32) - z_b) * x1[1] \
            + (((w >> 24) & 0xF).to(tl.float32) - z_b) * x2[1] + (((w >> 28) & 0xF).to(tl.float32) - z_b) * x3[1]
        return pa, pb


@triton.jit
def _half(pair, F16: tl.constexpr, HI: tl.constexpr):
    """One 16-bit float of an int32 pair (low or high half) as fp32."""
    if F16:
        h = (pair >> 16) if HI else pair
        return h.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    if HI:
        return (pair & -65536).to(tl.float32, bitcast=True)  # a bf16 in the top half of a word is that fp32
    return (pair << 16).to(tl.float32, bitcast=True)


@triton.jit
def _add_magic(pair, F16: tl.constexpr):
    """(z_A, z_B) packed -> (MAGIC + z_A, MAGIC + z_B) packed, exact for integer zeros up to 16."""
    if F16:
        return tl.inline_asm_elementwise("{ .reg .b32 m; mov.b32 m, 0x64006400; add.rn.f16x2 $0, $1, m; }",
                                         "=r,r", [pair], dtype=tl.int32, is_pure=True, pack=1)
    return tl.inline_asm_elementwise("{ .reg .b32 m; mov.b32 m, 0x43004300; add.rn.bf16x2 $0, $1, m; }",
                                     "=r,r", [pair], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _step(acc, w, x_row, s_rows, z_rows, nmask3, blk0, offs_b3, offs_j3, num_blocks, NUM_GROUPS,
          GROUP: tl.constexpr, P: tl.constexpr, PAIRED: tl.constexpr, ASM: tl.constexpr, F16: tl.constexpr,
          MAGIC: tl.constexpr):
    """acc [BN, BB, P] += this step's products: w [BN, BB, P] int32 words of blocks blk0 + b. Blocks past the end
    (and rows past N) get scale 0, so their words and activations need no mask: those are read from a valid
    block instead (the last), which saves zeroing registers for masked loads."""
    blk = blk0 + offs_b3  # [1, BB, 1]
    if PAIRED:  # group = 4 P: the two groups of block b are scales[n, 2b : 2b + 2], one 32-bit load
        bmask = nmask3 & (blk < num_blocks)
        s_pair = tl.load(s_rows + blk, mask=bmask, other=0)
        z_pair = tl.load(z_rows + blk, mask=bmask, other=0)
        s_a, s_b = _half(s_pair, F16, False), _half(s_pair, F16, True)
        if ASM:
            zp = _add_magic(z_pair, F16)
            z_a, z_b = 0.0, 0.0
        else:
            zp = 0
            z_a, z_b = _half(z_pair, F16, False), _half(z_pair, F16, True)
    else:  # planes 0..3 share one group, planes 4..7 one (planes_per_group 4 or 8)
        g_a = (blk * (8 * P)) // GROUP
        g_b = (blk * (8 * P) + 4 * P) // GROUP
        s_a = tl.load(s_rows + g_a, mask=nmask3 & (g_a < NUM_GROUPS), other=0.0).to(tl.float32)
        s_b = tl.load(s_rows + g_b, mask=nmask3 & (g_b < NUM_GROUPS), other=0.0).to(tl.float32)
        z_a16 = tl.load(z_rows + g_a, mask=nmask3 & (g_a < NUM_GROUPS), other=0.0)
        z_b16 = tl.load(z_rows + g_b, mask=nmask3 & (g_b < NUM_GROUPS), other=0.0)
        z_a, z_b = z_a16.to(tl.float32), z_b16.to(tl.float32)
        if ASM:
            zp = _pack_pair((z_a + MAGIC).to(z_a16.dtype), (z_b + MAGIC).to(z_b16.dtype))
        else:
            zp = 0
    k0 = tl.minimum(blk, num_blocks - 1) * (8 * P) + offs_j3  # [1, BB, P]: plane 0 of each word
    x0 = (tl.load(x_row + k0), tl.load(x_row + k0 + 4 * P))
    x1 = (tl.load(x_row + k0 + P), tl.load(x_row + k0 + 5 * P))
    x2 = (tl.load(x_row + k0 + 2 * P), tl.load(x_row + k0 + 6 * P))
    x3 = (tl.load(x_row + k0 + 3 * P), tl.load(x_row + k0 + 7 * P))
    if ASM:
        xs0, xs1 = _pack_pair(x0[0], x0[1]), _pack_pair(x1[0], x1[1])
        xs2, xs3 = _pack_pair(x2[0], x2[1]), _pack_pair(x3[0], x3[1])
        pa, pb = _word_partials(w, x0, x1, x2, x3, xs0, xs1, xs2, xs3, zp, z_a, z_b, ASM, F16)
    else:
        f0 = (x0[0].to(tl.float32), x0[1].to(tl.float32))
        f1 = (x1[0].to(tl.float32), x1[1].to(tl.float32))
        f2 = (x2[0].to(tl.float32), x2[1].to(tl.float32))
        f3 = (x3[0].to(tl.float32), x3[1].to(tl.float32))
        pa, pb = _word_partials(w, f0, f1, f2, f3, 0, 0, 0, 0, zp, z_a, z_b, ASM, F16)
    return acc + pa * s_a + pb * s_b


@triton.jit
def _w4a16_gemv_packed_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, out_ptr, M, N, K, NUM_GROUPS,
                              stride_xm, stride_om, stride_qn, stride_sn,
                              GROUP: tl.constexpr, P: tl.constexpr, PAIRED: tl.constexpr, HAS_BIAS: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr, ASM: tl.constexpr, F16: tl.constexpr,
                              MAGIC: tl.constexpr, USE_PDL: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < N
    offs_n3 = offs_n.to(tl.int64)[:, None, None]
    nmask3 = nmask[:, None, None]
    offs_b3 = tl.arange(0, BLOCK_B)[None, :, None]
    offs_j3 = tl.arange(0, P)[None, None, :]
    words = qw_ptr + offs_n3 * stride_qn + offs_b3 * P + offs_j3
    if PAIRED:  # scales and zeros read as int32 pairs (16-bit values, an even number per row)
        s_rows = s_ptr.to(tl.pointer_type(tl.int32), bitcast=True) + offs_n3 * (stride_sn // 2)
        z_rows = z_ptr.to(tl.pointer_type(tl.int32), bitcast=True) + offs_n3 * (stride_sn // 2)
    else:
        s_rows = s_ptr + offs_n3 * stride_sn
        z_rows = z_ptr + offs_n3 * stride_sn
    num_blocks = K // (8 * P)
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
    # Row 0: the first weight tile is loaded before waiting for the kernel before (PDL); each step then loads the
    # next tile before working on its own, so that a load is always in flight.
    w = tl.load(words, mask=nmask3 & (offs_b3 < num_blocks), eviction_policy="evict_first")  # masked: scale 0
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    acc = tl.zeros([BLOCK_N, BLOCK_B, P], dtype=tl.float32)
    for blk0 in range(BLOCK_B, num_blocks + BLOCK_B, BLOCK_B):
        wmask = nmask3 & (blk0 + offs_b3 < num_blocks)  # all false on the last step: no memory traffic
        w_next = tl.load(words + blk0 * P, mask=wmask, eviction_policy="evict_first")
        acc = _step(acc, w, x_ptr, s_rows, z_rows, nmask3, blk0 - BLOCK_B, offs_b3, offs_j3, num_blocks,
                    NUM_GROUPS, GROUP, P, PAIRED, ASM, F16, MAGIC)
        w = w_next
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
            w = tl.load(words + blk0 * P, mask=nmask3 & (blk0 + offs_b3 < num_blocks))
            acc = _step(acc, w, x_row, s_rows, z_rows, nmask3, blk0, offs_b3, offs_j3, num_blocks, NUM_GROUPS,
                        GROUP, P, PAIRED, ASM, F16, MAGIC)
        out = tl.sum(tl.sum(acc, axis=2), axis=1)
        if HAS_BIAS:
            out += bias
        tl.store(out_ptr + m * stride_om + offs_n, out.to(out_ptr.dtype.element_ty), mask=nmask)


def packed_supported(x: torch.Tensor, K: int, group_size: int) -> bool:
    """Whether this kernel takes the call: one zero per half word, and 16-bit activations on a GPU (any float dtype
    in the interpreter, which computes in fp32)."""
    if planes_per_group(K, group_size) not in (4, 8):
        return False
    return x.dtype in MAGIC_BITS or not x.is_cuda


def _paired(t: W4A16Tensors, K: int, group_size: int) -> bool:
    """Whether the two groups of a block can be read as one int32 of scales and one of zeros."""
    return (planes_per_group(K, group_size) == 4 and t.scales.element_size() == 2 and t.scales.stride(0) % 2 == 0
            and t.scales.data_ptr() % 4 == 0 and t.zeros.data_ptr() % 4 == 0)


def w4a16_gemv_packed(x: torch.Tensor, t: W4A16Tensors, group_size: int, bias: torch.Tensor | None = None,
                      **overrides) -> torch.Tensor:
    """x [M, K] (M small) -> [M, N] in x's dtype; needs packed_supported. With PDL the weight is read before the
    kernel before has finished: it must not be that kernel's output."""
    M, K = x.shape
    N = t.qweight.shape[0]
    P = plane_words(K)
    assert t.qweight.shape[1] * 8 == K and packed_supported(x, K, group_size)
    assert t.qweight.stride(1) == 1 and t.scales.stride(1) == 1 and t.zeros.stride() == t.scales.stride()
    assert t.zeros.dtype == x.dtype or not x.is_cuda  # the PTX reads the zeros' 16 bits as x's type
    cfg = dict(DEFAULTS, **overrides)
    if x.stride(1) != 1:
        x = x.contiguous()
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    block_b = max(1, min(cfg["block_b"], triton.next_power_of_2(K // (8 * P))))
    magic = 128.0 if x.dtype != torch.float16 else 1024.0
    grid = (triton.cdiv(N, cfg["block_n"]),)
    _w4a16_gemv_packed_kernel[grid](
        x, t.qweight, t.scales, t.zeros, bias if bias is not None else t.scales, out, M, N, K, t.scales.shape[1],
        x.stride(0), out.stride(0), t.qweight.stride(0), t.scales.stride(0), GROUP=group_size, P=P,
        PAIRED=_paired(t, K, group_size),
        HAS_BIAS=bias is not None, BLOCK_N=cfg["block_n"], BLOCK_B=block_b, ASM=x.is_cuda,
        F16=x.dtype == torch.float16, MAGIC=magic, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        **launch_options(x))
    return out
