"""FP8 W8A16 GEMV, second variant: what kernels/fp8_gemv.py does, with less work around each weight element.

Per element the floor on CUDA cores with fp32 sums is 2.5 instructions: half a `cvt.rn.f16x2.e4m3x2` (two
elements per instruction, exact: every e4m3 value is an fp16 value), one fp16 -> fp32 conversion, one FFMA
(16-bit products cannot be used: bf16 activations overflow fp16, and e4m3 -> bf16 costs more than it saves).
kernels/fp8_gemv.py spends 3.9 (benchmarks/compile_sm90.py): Triton gives the 8-bit weight tile and the 16-bit
activations different layouts and moves the activations through shared memory every step. Here the weight is
read as int32 words (4 elements), two words (8 bytes) per thread and row, converted by PTX (WORD_ASM: two cvt,
four fp16 -> fp32); with bf16 activations the 4 of a word are one int64, so the activations of a thread's two
words are one 16-byte load with the same register layout as the weight's: no shared memory, no barrier (3.55
per element; 3.30 with 16 rows). Every thread holds all BLOCK_N rows of its columns, so each activation serves
BLOCK_N rows.
Each step loads the next weight tile before working on its own. The interpreter (no PTX) converts the bytes with
Triton casts instead. Same contract as fp8_gemv; `fp8_gemv(variant="wide")` calls it. Needs K % 4 == 0.
"""
import torch
import triton
import triton.language as tl

from kernels.pdl import launch_options

DEFAULTS = dict(block_n=8, block_w=512, num_warps=4, num_stages=1)  # 512 words = 2048 elements of K per step

WORD_ASM = tl.constexpr(
    "{ .reg .b16 lo, hi; .reg .b32 a, b; .reg .b16 a0, a1, b0, b1; .reg .f32 f0, f1, f2, f3;"
    " mov.b32 {lo, hi}, $4; cvt.rn.f16x2.e4m3x2 a, lo; cvt.rn.f16x2.e4m3x2 b, hi;"
    " mov.b32 {a0, a1}, a; mov.b32 {b0, b1}, b;"
    " cvt.f32.f16 f0, a0; cvt.f32.f16 f1, a1; cvt.f32.f16 f2, b0; cvt.f32.f16 f3, b1;"
    " mov.b32 $0, f0; mov.b32 $1, f1; mov.b32 $2, f2; mov.b32 $3, f3; }")


@triton.jit
def _word_values(w, ASM: tl.constexpr):
    """int32 words of 4 e4m3 bytes -> the 4 values (byte 0 first) as fp32."""
    if ASM:
        v0, v1, v2, v3 = tl.inline_asm_elementwise(WORD_ASM, "=r,=r,=r,=r,r", [w], dtype=(tl.int32,) * 4,
                                                   is_pure=True, pack=1)
        return (v0.to(tl.float32, bitcast=True), v1.to(tl.float32, bitcast=True),
                v2.to(tl.float32, bitcast=True), v3.to(tl.float32, bitcast=True))
    else:
        return (_byte(w, 0), _byte(w, 8), _byte(w, 16), _byte(w, 24))


@triton.jit
def _byte(w, shift: tl.constexpr):
    return ((w >> shift) & 0xFF).to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(tl.float32)


@triton.jit
def _products(acc, w, x_row, j, jmask, ASM: tl.constexpr, X_BF16: tl.constexpr):
    """acc [BN, BW] += the 4 products of each word; j [1, BW] the word indices. With X_BF16 the 4 activations of a
    word are one int64 load (the weight words' layout, so no shared-memory round trip); else 4 loads."""
    v0, v1, v2, v3 = _word_values(w, ASM)
    if X_BF16:
        xw = tl.load(x_row.to(tl.pointer_type(tl.int64), bitcast=True) + j, mask=jmask, other=0)
        acc += v0 * ((xw << 16).to(tl.int32)).to(tl.float32, bitcast=True)  # a bf16 in the top half is that fp32
        acc += v1 * (xw.to(tl.int32) & -65536).to(tl.float32, bitcast=True)
        acc += v2 * ((xw >> 16).to(tl.int32) & -65536).to(tl.float32, bitcast=True)
        acc += v3 * ((xw >> 32).to(tl.int32) & -65536).to(tl.float32, bitcast=True)
    else:
        acc += v0 * tl.load(x_row + 4 * j, mask=jmask, other=0.0).to(tl.float32)
        acc += v1 * tl.load(x_row + 4 * j + 1, mask=jmask, other=0.0).to(tl.float32)
        acc += v2 * tl.load(x_row + 4 * j + 2, mask=jmask, other=0.0).to(tl.float32)
        acc += v3 * tl.load(x_row + 4 * j + 3, mask=jmask, other=0.0).to(tl.float32)
    return acc


@triton.jit
def _fp8_gemv_wide_kernel(x_ptr, w_ptr, ws_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_om, stride_wn,
                          HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, ASM: tl.constexpr,
                          X_BF16: tl.constexpr, USE_PDL: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n[:, None] < N
    words = w_ptr.to(tl.pointer_type(tl.int32), bitcast=True) + offs_n.to(tl.int64)[:, None] * (stride_wn // 4)
    # Two words (8 bytes) per thread and row: the activations of two words are 16 bytes, so both loads get the
    # same register layout and the activations need no trip through shared memory.
    offs_w = tl.max_contiguous(tl.arange(0, BLOCK_W), 2)[None, :]  # [1, BW]
    KW = K // 4
    w = tl.load(words + offs_w, mask=nmask & (offs_w < KW), other=0, eviction_policy="evict_first")
    if USE_PDL:
        tl.extra.cuda.gdc_wait()  # x is the kernel before's output; the weight above is not
    ws = tl.load(ws_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_W], dtype=tl.float32)
    for w0 in range(0, KW, BLOCK_W):
        nxt = w0 + BLOCK_W + offs_w
        w_next = tl.load(words + nxt, mask=nmask & (nxt < KW), other=0,
                         eviction_policy="evict_first")  # all masked on the last step: no traffic
        acc = _products(acc, w, x_ptr, w0 + offs_w, w0 + offs_w < KW, ASM, X_BF16)
        w = w_next
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()  # every program has got this far: all are running
    out = tl.sum(acc, axis=1) * ws
    if HAS_BIAS:
        out += bias
    tl.store(out_ptr + offs_n, out.to(out_ptr.dtype.element_ty), mask=offs_n < N)
    for m in range(1, M):  # further rows: the same rows of the weight again, now from L2
        acc = tl.zeros([BLOCK_N, BLOCK_W], dtype=tl.float32)
        for w0 in range(0, KW, BLOCK_W):
            w = tl.load(words + w0 + offs_w, mask=nmask & (w0 + offs_w < KW), other=0)
            acc = _products(acc, w, x_ptr + m * stride_xm, w0 + offs_w, w0 + offs_w < KW, ASM, X_BF16)
        out = tl.sum(acc, axis=1) * ws
        if HAS_BIAS:
            out += bias
        tl.store(out_ptr + m * stride_om + offs_n, out.to(out_ptr.dtype.element_ty), mask=offs_n < N)


def fp8_gemv_wide(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                  bias: torch.Tensor | None = None, **overrides) -> torch.Tensor:
    """As kernels.fp8_gemv.fp8_gemv: x [M, K] -> [M, N] in x's dtype; weight [N, K] e4m3, weight_scale [N] fp32."""
    M, K = x.shape
    N = weight.shape[0]
    assert weight.shape[1] == K and weight.stride(1) == 1 and K % 4 == 0 and weight.stride(0) % 4 == 0
    assert weight.data_ptr() % 4 == 0
    cfg = dict(DEFAULTS, **overrides)
    if x.stride(1) != 1:
        x = x.contiguous()
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(N, cfg["block_n"]),)
    _fp8_gemv_wide_kernel[grid](x, weight, weight_scale, bias if bias is not None else weight_scale, out, M, N, K,
                                x.stride(0), out.stride(0), weight.stride(0), HAS_BIAS=bias is not None,
                                BLOCK_N=cfg["block_n"], BLOCK_W=min(cfg["block_w"], triton.next_power_of_2(K // 4)),
                                ASM=x.is_cuda, X_BF16=x.dtype == torch.bfloat16 and x.data_ptr() % 8 == 0
                                and x.stride(0) % 4 == 0, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                                **launch_options(x))
    return out
