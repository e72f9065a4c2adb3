"""Paged prefill attention: causal attention of a variable-length batch of new tokens over the
paged KV cache (which already holds any cached prefix and the new tokens' own K/V).

One launch covers the whole batch: the grid is sized from shapes alone (an upper bound on the
number of BLOCK_M query tiles, plus one per sequence for rounding) and each program finds its
sequence and tile from cu_seqlens_q in the kernel, so no host sync is needed.
"""

import torch
import triton
import triton.language as tl

from kernels.attention_block import attend, dot_precision, fp8_mode, is_fp8, kv_scales
from kernels.prefill_packed import launch_packed

DEFAULTS = dict(block_m=128, block_n=64, num_warps=8, num_stages=3)
FP8_DEFAULTS = dict(DEFAULTS, fp8_mode="asm_vt")  # an fp8 cache: see kernels/attention_block.py (H200: 2% ahead)
_INTERPRET_DEFAULTS = dict(block_m=16, block_n=16, num_warps=1, num_stages=1)
# The tile -> sequence search spans BLOCK_B sequences. One width up to 256 sequences (the default max_num_seqs)
# keeps to one compiled variant; the search is a few hundred integer ops per program, noise beside the attention.
MIN_BLOCK_B = 256
# What a CUDA launch runs when the caller gives no overrides, per case: "long" when the batch averages at least
# LONG_TOKENS new tokens a sequence (a fresh prompt), "short" otherwise (extend over a cached prefix, mixed steps).
# {} keeps DEFAULTS; {"variant": "packed", ...} picks kernels/prefill_packed.py. benchmarks/prefill_sweep.py prints
# the entries its H200 run recommends. Two H200 runs, 2026-12-01 (us, packed / base): one query head a program
# ("packed_plain") is 1-4% ahead on fresh prompts (8 x 1024 causal 332 / 347, 328 / 331) and no better, or far
# worse, on short extends (1536 cached + 64 new x 32: 392 / 231). As the "long" default it was compiled at its first
# long prompt in a live server and stalled it for ~0.9 s (TTFT p99 902 ms at Poisson 4 req/s, against 49 ms
# without): both entries stay with the base kernel, which the warm-up compiles. Reading the new tokens' K/V from the
# step's own k / v ("packed_own": 249 us at 8 x 1024) is not wired into the engine: attention is ~4% of a step on
# fresh prompts, and it loses on extends.
TUNED: dict[str, dict] = {"long": {}, "short": {}}
LONG_TOKENS = 512


def tuned_overrides(num_tokens: int, num_seqs: int) -> dict:
    """The TUNED entry for a launch of num_tokens new tokens over num_seqs sequences (host-side shapes only)."""
    return TUNED["long" if num_tokens >= LONG_TOKENS * max(num_seqs, 1) else "short"]


# B and the block-table width vary step to step, and a mixed step passes the metadata from row num_decode_seqs on
# (offsets that may or may not be 16-byte aligned): none is specialized on, so that no new batch shape compiles a
# new variant (a first-use compile stalls a live server for over a second).
@triton.jit(do_not_specialize=["B", "block_tables_ptr", "cu_seqlens_ptr", "context_lens_ptr", "stride_bt"])
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, cu_seqlens_ptr, context_lens_ptr, out_ptr,
    k_scale_ptr, v_scale_ptr, qk_scale, B,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_cb, stride_ct, stride_ch, stride_bt,
    GROUP: tl.constexpr, D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr, DOT_F32: tl.constexpr,
    PRECISION: tl.constexpr, KV_FP8: tl.constexpr, FP8_MODE: tl.constexpr, SPLIT_TAIL: tl.constexpr,
):
    tile = tl.program_id(0)
    h = tl.program_id(1)
    # Which sequence owns this tile: prefix sums of per-sequence tile counts.
    offs_b = tl.arange(0, BLOCK_B)
    bmask = offs_b < B
    q_starts = tl.load(cu_seqlens_ptr + offs_b, mask=bmask, other=0)
    n_new_all = tl.load(cu_seqlens_ptr + offs_b + 1, mask=bmask, other=0) - q_starts
    tiles = tl.where(bmask, tl.cdiv(n_new_all, BLOCK_M), 0)
    tiles_end = tl.cumsum(tiles, 0)
    seq = tl.sum((tiles_end <= tile).to(tl.int32), 0)
    if seq >= B:
        return  # the grid is an upper bound
    sel = offs_b == seq
    # Heaviest (last, longest causal span) tile first, so the light ones fill the tail of the launch.
    tile_in_seq = tl.sum(tl.where(sel, tiles_end, 0), 0) - 1 - tile
    q_start = tl.sum(tl.where(sel, q_starts, 0), 0)
    n_new = tl.sum(tl.where(sel, n_new_all, 0), 0)
    ctx = tl.load(context_lens_ptr + seq)

    offs_m = tile_in_seq * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    mmask = offs_m < n_new
    q_pos = ctx - n_new + offs_m  # absolute position of each new token
    rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(q_ptr + rows[:, None] * stride_qt + h * stride_qh + offs_d[None, :], mask=mmask[:, None], other=0.0)
    if DOT_F32:  # the interpreter (triton 3.9) gets bf16 tl.dot wrong; GPUs use the native dtype
        q = q.to(tl.float32)
    elif KV_FP8:  # e4m3 -> fp16 is one instruction per pair and exact: the dots run in fp16 (q within its range)
        q = q.to(tl.float16)

    if KV_FP8:  # scores of the stored keys times k_scale are the real keys' scores
        qk_scale = qk_scale * tl.load(k_scale_ptr)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    head_off = (h // GROUP).to(tl.int64) * stride_ch
    first_pos = ctx - n_new + tile_in_seq * BLOCK_M
    kv_end = tl.minimum(first_pos + BLOCK_M, ctx)  # one past the last position this tile sees
    # Key tiles entirely at or before the tile's first query need no causal mask.
    unmasked_end = ((first_pos + 1) // BLOCK_N) * BLOCK_N
    # (every key there is before kv_end too: with SPLIT_TAIL its loads go unmasked)
    m_i, l_i, acc = attend(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row, head_off, q_pos, qk_scale,
                           0, unmasked_end, kv_end, stride_cb, stride_ct, offs_d,
                           BLOCK_SIZE, BLOCK_N, False, DOT_F32, PRECISION, FP8_MODE, not SPLIT_TAIL)
    m_i, l_i, acc = attend(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row, head_off, q_pos, qk_scale,
                           unmasked_end, kv_end, kv_end, stride_cb, stride_ct, offs_d,
                           BLOCK_SIZE, BLOCK_N, True, DOT_F32, PRECISION, FP8_MODE)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    if KV_FP8:
        out = out * tl.load(v_scale_ptr)
    tl.store(out_ptr + rows[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mmask[:, None])


def paged_prefill_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor, context_lens: torch.Tensor, scale: float,
    out: torch.Tensor | None = None, k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None,
    **overrides,
) -> torch.Tensor:
    """q [T, Hq, D] new tokens of B sequences back to back; cu_seqlens_q [B+1] int32;
    context_lens [B] int32 = cached prefix + new tokens. Returns [T, Hq, D] in q's dtype.
    An fp8 (e4m3) cache holds K / k_scale and V / v_scale: k_scale and v_scale are float32 scalar tensors."""
    T, HQ, D = q.shape
    _, block_size, HKV, Dk = k_cache.shape
    B = context_lens.shape[0]
    assert Dk == D and HQ % HKV == 0 and triton.next_power_of_2(D) == D
    assert k_cache.stride(3) == 1 and v_cache.stride() == k_cache.stride()
    if q.stride(2) != 1:
        q = q.contiguous()
    if q.is_cuda and not overrides and not is_fp8(k_cache):  # fp8 keeps FP8_DEFAULTS (its own sweep)
        overrides = tuned_overrides(T, B)
    if out is None:
        out = torch.empty((T, HQ, D), dtype=q.dtype, device=q.device)
    if T == 0 or B == 0:
        return out
    k_scale, v_scale, kv_fp8 = kv_scales(k_cache, k_scale, v_scale)
    variant = overrides.get("variant", "base")
    assert variant in ("base", "packed"), variant
    if variant == "packed":
        return launch_packed(q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, out, k_scale, v_scale,
                             kv_fp8, scale * 1.4426950408889634, dot_precision(q),
                             {k: v for k, v in overrides.items() if k != "variant"})
    assert "k_new" not in overrides and "v_new" not in overrides, "k_new / v_new: variant=\"packed\" only"
    cfg = dict((FP8_DEFAULTS if is_fp8(k_cache) else DEFAULTS) if q.is_cuda else _INTERPRET_DEFAULTS)
    cfg.update({k: v for k, v in overrides.items() if k != "variant"})
    bm, bn = cfg["block_m"], cfg["block_n"]
    grid = (triton.cdiv(T, bm) + B, HQ)
    _prefill_kernel[grid](
        q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, out, k_scale, v_scale,
        scale * 1.4426950408889634, B,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        GROUP=HQ // HKV, D=D, BLOCK_SIZE=block_size, BLOCK_M=bm, BLOCK_N=bn,
        BLOCK_B=max(MIN_BLOCK_B, triton.next_power_of_2(B)), DOT_F32=not q.is_cuda, PRECISION=dot_precision(q),
        KV_FP8=kv_fp8, FP8_MODE=fp8_mode(k_cache, q, cfg), SPLIT_TAIL=cfg.get("split_tail", False),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out


def paged_prefill_attention_ref(q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale,
                                k_scale=None, v_scale=None):
    """Plain torch: per sequence, gather K/V of positions [0, ctx) (times k_scale / v_scale, if given) and
    apply a causal mask offset by the cached prefix; softmax in fp32."""
    ks, vs = (1.0 if s is None else float(s) for s in (k_scale, v_scale))
    T, HQ, D = q.shape
    block_size, HKV = k_cache.shape[1], k_cache.shape[2]
    out = torch.zeros((T, HQ, D), dtype=torch.float32, device=q.device)
    for b in range(context_lens.shape[0]):
        s0, s1 = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        n_new, ctx = s1 - s0, int(context_lens[b])
        if n_new == 0:
            continue
        pos = torch.arange(ctx, device=q.device)
        blocks = block_tables[b].long()[pos // block_size]
        k = (k_cache[blocks, pos % block_size].float() * ks).repeat_interleave(HQ // HKV, dim=1)
        v = (v_cache[blocks, pos % block_size].float() * vs).repeat_interleave(HQ // HKV, dim=1)
        s = torch.einsum("thd,nhd->htn", q[s0:s1].float(), k) * scale
        q_pos = torch.arange(ctx - n_new, ctx, device=q.device)
        s = s.masked_fill(pos[None, None, :] > q_pos[None, :, None], float("-inf"))
        out[s0:s1] = torch.einsum("htn,nhd->thd", torch.softmax(s, dim=-1), v)
    return out.to(q.dtype)
