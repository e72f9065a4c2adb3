"""Rotary position embedding (neox / rotate_half layout) fused with the KV-cache write.

The cos/sin table the kernel reads is built by engine/layers/rotary.py (build_cos_sin_cache, triton-free).
"""

import torch
import triton
import triton.language as tl

from kernels.pdl import launch_options, pdl_start


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
    pos_ptr, slot_ptr, q_ptr, k_ptr, v_ptr, cache_ptr, k_cache_ptr, v_cache_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_cache, stride_cslot, stride_ch,
    HQ, HK, HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, USE_PDL: tl.constexpr,
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
        tl.store(k_cache_ptr + dst, r1.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(k_cache_ptr + dst + HALF, r2.to(k_cache_ptr.dtype.element_ty), mask=mask)
        vsrc = t * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :]
        v1 = tl.load(v_ptr + vsrc, mask=mask)
        v2 = tl.load(v_ptr + vsrc + HALF, mask=mask)
        tl.store(v_cache_ptr + dst, v1.to(v_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(v_cache_ptr + dst + HALF, v2.to(v_cache_ptr.dtype.element_ty), mask=mask)


def rotary_store_kv(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    cos_sin_cache: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    slot_mapping: torch.Tensor) -> None:
    """One kernel for a layer's rotary and KV-cache write: rotates q in place, and writes the rotated k and
    v into their cache slots (k itself is left as it was). q [T, Hq, D], k and v [T, Hkv, D] (views of a
    fused qkv output are fine); caches [blocks, block_size, Hkv, D], contiguous."""
    T, HQ, D = q.shape
    HK = k.shape[1]
    assert q.stride(2) == 1 and k.stride(2) == 1 and v.stride(2) == 1
    assert D % 2 == 0 and triton.next_power_of_2(D // 2) == D // 2
    assert cos_sin_cache.shape[1] == D and cos_sin_cache.stride(1) == 1
    assert k_cache.is_contiguous() and v_cache.shape == k_cache.shape and v_cache.is_contiguous()
    assert k_cache.shape[2:] == (HK, D)
    if T == 0:
        return
    _rotary_store_kv_kernel[(T,)](
        positions, slot_mapping, q, k, v, cos_sin_cache, k_cache, v_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos_sin_cache.stride(0),
        k_cache.stride(1), k_cache.stride(2),
        HQ, HK, HALF=D // 2, BLOCK_HQ=triton.next_power_of_2(HQ), BLOCK_HK=triton.next_power_of_2(HK),
        num_warps=4, **launch_options(q),
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


def rotary_store_kv_ref(positions, q, k, v, cos_sin_cache, k_cache, v_cache, slot_mapping) -> None:
    """Plain torch: q rotated in place; the rotated k (rounded to k's dtype) and v written to their slots
    (slot -1: nowhere); k itself left as it was."""
    k = k.clone()
    apply_rotary_ref(positions, q, k, cos_sin_cache)
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k_cache.view(-1, *k_cache.shape[2:])[slots] = k[keep].to(k_cache.dtype)
    v_cache.view(-1, *v_cache.shape[2:])[slots] = v[keep].to(v_cache.dtype)
