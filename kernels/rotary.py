"""Rotary position embedding (neox / rotate_half layout), applied in place to q and k."""

import torch
import triton
import triton.language as tl

from engine.layers.rotary import build_cos_sin_cache  # noqa: F401  (the table the kernel reads)


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
def _rotary_kernel(
    pos_ptr, q_ptr, k_ptr, cache_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_cache,
    HQ, HK, HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    offs_d = tl.arange(0, HALF)
    cos = tl.load(cache_ptr + pos * stride_cache + offs_d)[None, :]
    sin = tl.load(cache_ptr + pos * stride_cache + HALF + offs_d)[None, :]
    _rotate(q_ptr, stride_qt, stride_qh, t, cos, sin, HQ, HALF, BLOCK_HQ)
    _rotate(k_ptr, stride_kt, stride_kh, t, cos, sin, HK, HALF, BLOCK_HK)


def apply_rotary(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor) -> None:
    """In place. q [T, Hq, D], k [T, Hkv, D] (last dim contiguous; views of fused qkv are fine)."""
    T, HQ, D = q.shape
    HK = k.shape[1]
    assert q.stride(2) == 1 and k.stride(2) == 1, "rotary works in place: last dim must be contiguous"
    assert D % 2 == 0 and triton.next_power_of_2(D // 2) == D // 2
    assert cos_sin_cache.shape[1] == D and cos_sin_cache.stride(1) == 1
    if T == 0:
        return
    _rotary_kernel[(T,)](
        positions, q, k, cos_sin_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos_sin_cache.stride(0),
        HQ, HK, HALF=D // 2, BLOCK_HQ=triton.next_power_of_2(HQ), BLOCK_HK=triton.next_power_of_2(HK),
        num_warps=4,
    )


def apply_rotary_ref(positions, q, k, cos_sin_cache) -> None:
    half = q.shape[-1] // 2
    cs = cos_sin_cache[positions.long()].float()
    cos, sin = cs[:, None, :half], cs[:, None, half:]
    for x in (q, k):
        x1, x2 = x[..., :half].float(), x[..., half:].float()
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        x.copy_(out.to(x.dtype))


