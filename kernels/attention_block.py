"""The block loop that decode and prefill attention share: online softmax of a tile of queries over the
paged KV cache, one BLOCK_N run of key positions at a time (kernels/decode_attention.py and
kernels/prefill_attention.py each choose the positions and the tile).

An fp8 (e4m3) cache is read as its bytes and converted to q's dtype in registers (exact: every e4m3 value is an
fp16 value; the callers hand an fp16 q, since e4m3 -> fp16 is one instruction per pair of values and bf16 takes
two more); its per-layer scales never touch an element here: the callers fold k_scale into qk_scale and v_scale
into the output (kv_scales). How the bytes become fp16 (FP8_MODES, the kernels' `fp8_mode`): "cast" leaves it to
Triton, which moves the 8-bit V tile into the dot's layout byte by byte (V's reduction axis, the tokens, is not
its contiguous one, and there is no 8-bit transposing ldmatrix); "asm" converts with PTX four values at a time
(e4m3_to_f16), which keeps fewer registers live; "asm_vt" also reads V as [D, BLOCK_N] and transposes it after the
conversion, so that it moves as 16-bit values (ldmatrix.trans). benchmarks/kv_fp8.py times them."""

import torch
import triton
import triton.language as tl


def dot_precision(q: torch.Tensor) -> str:
    """fp32 inputs get full fp32 products ("ieee"), not tf32: fp32 runs exist to match a reference exactly.
    Other dtypes ignore the setting; the interpreter computes in fp32 (DOT_F32) either way."""
    return "ieee" if q.dtype == torch.float32 or not q.is_cuda else "tf32"


FP8_MODES = {"cast": 0, "asm": 1, "asm_vt": 2}


def fp8_mode(k_cache: torch.Tensor, q: torch.Tensor, cfg: dict) -> int:
    """The FP8_MODE constexpr of a launch: 0 unless an fp8 cache on a GPU (the interpreter has no PTX)."""
    return FP8_MODES[cfg.get("fp8_mode", "cast")] if is_fp8(k_cache) and q.is_cuda else 0


def is_fp8(cache: torch.Tensor) -> bool:
    return cache.dtype == torch.float8_e4m3fn


def kv_scales(k_cache: torch.Tensor, k_scale: torch.Tensor | None, v_scale: torch.Tensor | None):
    """(k_scale, v_scale, KV_FP8) for a launch: the scale tensors (float32 scalars, read in the kernel so that a
    CUDA graph sees scales loaded after capture and no host sync is needed) for an fp8 cache; for any other
    cache none are read and the cache itself stands in for the pointers."""
    if not is_fp8(k_cache):
        return k_cache, k_cache, False
    assert k_scale is not None and v_scale is not None, "an fp8 KV cache needs k_scale and v_scale"
    assert k_scale.dtype == v_scale.dtype == torch.float32 and k_scale.numel() == v_scale.numel() == 1
    return k_scale, v_scale, True


@triton.jit
def e4m3_to_f16(x):
    """fp8 (e4m3) -> fp16 by PTX, two cvt per 4 values."""
    return tl.inline_asm_elementwise(
        "{ .reg .b16 lo, hi; mov.b32 {lo, hi}, $2; cvt.rn.f16x2.e4m3x2 $0, lo; cvt.rn.f16x2.e4m3x2 $1, hi; }",
        "=r,=r,r", [x.to(tl.uint8, bitcast=True)], dtype=tl.float16, is_pure=True, pack=4)


@triton.jit
def attend(
    q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row, head_off, q_pos, qk_scale,
    lo, hi, kv_end, stride_cb, stride_ct, offs_d,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL_MASK: tl.constexpr, DOT_F32: tl.constexpr,
    PRECISION: tl.constexpr, FP8_MODE: tl.constexpr = 0, MASK_N: tl.constexpr = True,
):
    """Online softmax of q's rows over the paged K/V of positions [lo, hi) (none at or past kv_end), carried in
    (m_i, l_i, acc); CAUSAL_MASK also drops keys past each row's q_pos. Decode and prefill attention share it.
    MASK_N False: the caller knows every run of [lo, hi) is whole and before kv_end, so no load is masked."""
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nmask = offs_n < kv_end
        if MASK_N:
            blk = tl.load(bt_row + offs_n // BLOCK_SIZE, mask=nmask, other=0).to(tl.int64)
        else:
            blk = tl.load(bt_row + offs_n // BLOCK_SIZE).to(tl.int64)
        tok = blk * stride_cb + (offs_n % BLOCK_SIZE) * stride_ct + head_off
        if MASK_N:
            k = tl.load(k_cache_ptr + tok[None, :] + offs_d[:, None], mask=nmask[None, :], other=0.0)
        else:
            k = tl.load(k_cache_ptr + tok[None, :] + offs_d[:, None])
        if FP8_MODE > 0:  # an fp8 cache on a GPU, q in fp16
            k = e4m3_to_f16(k)
        else:
            k = k.to(q.dtype)  # fp8 -> q's dtype; a no-op for a cache in q's dtype (fp32 under DOT_F32)
        s = tl.dot(q, k, input_precision=PRECISION) * qk_scale  # log2 domain: qk_scale folds in log2(e)
        if CAUSAL_MASK:
            s = tl.where((offs_n[None, :] <= q_pos[:, None]) & nmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if FP8_MODE == 2:
            if MASK_N:
                v = tl.load(v_cache_ptr + tok[None, :] + offs_d[:, None], mask=nmask[None, :], other=0.0)
            else:
                v = tl.load(v_cache_ptr + tok[None, :] + offs_d[:, None])
            v = tl.trans(e4m3_to_f16(v))
        else:
            if MASK_N:
                v = tl.load(v_cache_ptr + tok[:, None] + offs_d[None, :], mask=nmask[:, None], other=0.0)
            else:
                v = tl.load(v_cache_ptr + tok[:, None] + offs_d[None, :])
            v = e4m3_to_f16(v) if FP8_MODE == 1 else v.to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return m_i, l_i, acc
