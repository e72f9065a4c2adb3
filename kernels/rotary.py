"""Rotary position embedding (neox / rotate_half layout) fused with the KV-cache write.

The cos/sin table the kernel reads is built by engine/layers/rotary.py (build_cos_sin_cache, triton-free).
An fp8 (e4m3) cache stores K / k_scale and V / v_scale, saturated to +-FP8_MAX (vLLM's convention).
"""

import torch
import triton
import triton.language as tl

from kernels.attention_block import kv_scales
from kernels.pdl import launch_options, pdl_start

FP8_MAX = 448.0  # the largest finite float8_e4m3fn


@triton.jit
def _round_to_e4m3(x):
    """x (fp32, |x| <= 448) rounded to the nearest e4m3 value, ties to even, in fp32 arithmetic. Only for the
    interpreter: its own fp32 -> fp8 cast drops the rounding's carry into the exponent (1.97 becomes 1.0); the
    GPU's cvt.rn.satfinite rounds right."""
    e = (x.to(tl.int32, bitcast=True) >> 23) & 0xFF
    ulp = ((tl.maximum(e - 127, -6) - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 3 mantissa bits; min exp -6
    c = ulp * 12582912.0  # 1.5 * 2^23 ulps: adding and taking it away rounds to a multiple of ulp, ties to even
    r = (tl.abs(x) + c) - c
    return tl.where(x < 0, -r, r)  # a tiny negative value rounds to -0, as the cast does


@triton.jit
def _to_cache(x, scale, cache_ptr, KV_FP8: tl.constexpr, ROUND_F32: tl.constexpr):
    """x in the cache's dtype: divided by the layer's scale and saturated for fp8, else a plain cast."""
    if KV_FP8:
        x = tl.minimum(tl.maximum(x.to(tl.float32) / scale, -448.0), 448.0)
        if ROUND_F32:
            x = _round_to_e4m3(x)
    return x.to(cache_ptr.dtype.element_ty)


@triton.jit
def _rotate(ptr, stride_t, stride_h, t, cos, sin, H, HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, HALF)
    mask = offs_h[:, None] < H
    p1 = ptr + t * stride_t + offs_h[:, None] * stride_h + offs_d[None, :]
    x1 = tl.load(p1, mask=mask).to(tl.float32)
    x2 = tl.load(p1 + HALF, mask=mask).to(tl.float32)
    tl.store(p1, (x1 * cos - x2 * sin).to(ptr.dtype.element_ty), mask=mask)
    tl.store(p1 + HALF, (x2 * cos + x1 * sin).to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _cos_sin(pos_ptr, cache_ptr, stride_cache, t, HALF: tl.constexpr):
    """Token t's cos and sin rows [1, HALF] from the table (cos in the first half of a row, sin in the second)."""
    pos = tl.load(pos_ptr + t).to(tl.int64)
    offs_d = tl.arange(0, HALF)
    cos = tl.load(cache_ptr + pos * stride_cache + offs_d)[None, :]
    sin = tl.load(cache_ptr + pos * stride_cache + HALF + offs_d)[None, :]
    return cos, sin


@triton.jit
def _rotary_store_kv_kernel(
    pos_ptr, slot_ptr, q_ptr, k_ptr, v_ptr, cache_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_cache, stride_cslot, stride_ch,
    HQ, HK, HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, KV_FP8: tl.constexpr,
    ROUND_F32: tl.constexpr, USE_PDL: tl.constexpr, K_IN_PLACE: tl.constexpr = False,
):
    pdl_start(USE_PDL)
    t = tl.program_id(0).to(tl.int64)
    cos, sin = _cos_sin(pos_ptr, cache_ptr, stride_cache, t, HALF)
    _rotate(q_ptr, stride_qt, stride_qh, t, cos, sin, HQ, HALF, BLOCK_HQ)
    offs_d = tl.arange(0, HALF)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:  # padding tokens carry slot -1: they must not touch the cache
        offs_h = tl.arange(0, BLOCK_HK)
        mask = offs_h[:, None] < HK
        src = t * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :]
        dst = slot * stride_cslot + offs_h[:, None] * stride_ch + offs_d[None, :]
        k1 = tl.load(k_ptr + src, mask=mask).to(tl.float32)
        k2 = tl.load(k_ptr + src + HALF, mask=mask).to(tl.float32)
        # Round to k's dtype first, as the unfused path does (rotate in place, then copy to the cache).
        r1 = (k1 * cos - k2 * sin).to(k_ptr.dtype.element_ty)
        r2 = (k2 * cos + k1 * sin).to(k_ptr.dtype.element_ty)
        if K_IN_PLACE:  # for a prefill kernel that reads the step's own keys from k (kernels/prefill_packed.py)
            tl.store(k_ptr + src, r1, mask=mask)
            tl.store(k_ptr + src + HALF, r2, mask=mask)
        ks = tl.load(k_scale_ptr) if KV_FP8 else 1.0
        vs = tl.load(v_scale_ptr) if KV_FP8 else 1.0
        tl.store(k_cache_ptr + dst, _to_cache(r1, ks, k_cache_ptr, KV_FP8, ROUND_F32), mask=mask)
        tl.store(k_cache_ptr + dst + HALF, _to_cache(r2, ks, k_cache_ptr, KV_FP8, ROUND_F32), mask=mask)
        vsrc = t * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :]
        v1 = tl.load(v_ptr + vsrc, mask=mask)
        v2 = tl.load(v_ptr + vsrc + HALF, mask=mask)
        tl.store(v_cache_ptr + dst, _to_cache(v1, vs, v_cache_ptr, KV_FP8, ROUND_F32), mask=mask)
        tl.store(v_cache_ptr + dst + HALF, _to_cache(v2, vs, v_cache_ptr, KV_FP8, ROUND_F32), mask=mask)


def rotary_store_kv(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    cos_sin_cache: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    slot_mapping: torch.Tensor, k_scale: torch.Tensor | None = None,
                    v_scale: torch.Tensor | None = None, k_in_place: bool = False) -> None:
    """One kernel for a layer's rotary and KV-cache write: rotates q in place, and writes the rotated k and
    v into their cache slots (k itself is left as it was, unless k_in_place: then k is rotated too, for tokens
    with a slot). q [T, Hq, D], k and v [T, Hkv, D] (views of a
    fused qkv output are fine); caches [blocks, block_size, Hkv, D], contiguous. An fp8 cache gets
    k / k_scale and v / v_scale (float32 scalar tensors), saturated to +-FP8_MAX."""
    T, HQ, D = q.shape
    HK = k.shape[1]
    assert q.stride(2) == 1 and k.stride(2) == 1 and v.stride(2) == 1
    assert D % 2 == 0 and triton.next_power_of_2(D // 2) == D // 2
    assert cos_sin_cache.shape[1] == D and cos_sin_cache.stride(1) == 1
    assert k_cache.is_contiguous() and v_cache.shape == k_cache.shape and v_cache.is_contiguous()
    assert k_cache.shape[2:] == (HK, D)
    if T == 0:
        return
    k_scale, v_scale, kv_fp8 = kv_scales(k_cache, k_scale, v_scale)
    _rotary_store_kv_kernel[(T,)](
        positions, slot_mapping, q, k, v, cos_sin_cache, k_cache, v_cache, k_scale, v_scale,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos_sin_cache.stride(0),
        k_cache.stride(1), k_cache.stride(2),
        HQ, HK, HALF=D // 2, BLOCK_HQ=triton.next_power_of_2(HQ), BLOCK_HK=triton.next_power_of_2(HK),
        KV_FP8=kv_fp8, ROUND_F32=not q.is_cuda, K_IN_PLACE=k_in_place, num_warps=4, **launch_options(q),
    )


def apply_rotary_ref(positions, q, k, cos_sin_cache) -> None:
    """Plain torch, in place: rotate q and k in fp32 and round back to their dtype."""
    half = q.shape[-1] // 2
    cs = cos_sin_cache[positions.long()].float()
    cos, sin = cs[:, None, :half], cs[:, None, half:]
    for x in (q, k):
        x1, x2 = x[..., :half].float(), x[..., half:].float()
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        x.copy_(out.to(x.dtype))


def quantize_kv_ref(x: torch.Tensor, scale) -> torch.Tensor:
    """What an fp8 cache stores for x: x / scale in fp32, saturated to +-FP8_MAX, rounded to e4m3."""
    return (x.float() / float(scale)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def rotary_store_kv_ref(positions, q, k, v, cos_sin_cache, k_cache, v_cache, slot_mapping, k_scale=None,
                        v_scale=None) -> None:
    """Plain torch: q rotated in place; the rotated k (rounded to k's dtype) and v written to their slots
    (slot -1: nowhere), quantized with k_scale / v_scale for an fp8 cache; k itself left as it was."""
    k = k.clone()
    apply_rotary_ref(positions, q, k, cos_sin_cache)
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    fp8 = k_cache.dtype == torch.float8_e4m3fn
    for cache, x, scale in ((k_cache, k, k_scale), (v_cache, v, v_scale)):
        x = quantize_kv_ref(x[keep], scale) if fp8 else x[keep].to(cache.dtype)
        flat = cache.view(-1, *cache.shape[2:])
        if fp8:  # the CPU has no fp8 index_put: write the bytes
            flat, x = flat.view(torch.uint8), x.view(torch.uint8)
        flat[slots] = x
