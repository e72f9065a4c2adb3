"""A restructured paged prefill kernel for Hopper, reached through paged_prefill_attention(..., variant="packed").
Same inputs, outputs and tile -> sequence search as kernels/prefill_attention.py (one launch, no host sync,
zero-length sequences cost one early return); what differs are these switches, each a keyword override so that
one GPU run (benchmarks/prefill_sweep.py) can time every combination:

- pack: query heads per program (1 .. GROUP, a power of two) that share one KV head. The tile's BLOCK_M rows are
  BLOCK_M // pack tokens x pack heads, so each K/V tile is read once for pack heads and the causal diagonal spans
  BLOCK_M // pack tokens (fewer wasted masked scores than one head's BLOCK_M tokens).
- k_natural: K read as [BLOCK_N, D], its memory order, and transposed for the dot (tl.trans), instead of read
  as [D, BLOCK_N].
- page_addr: the tile's block ids read once per page (BLOCK_N // BLOCK_SIZE loads, not one per key) and each
  page's base offset broadcast over its BLOCK_SIZE tokens.
- scale_q: qk_scale folded into q once instead of multiplying every score.
- loop_stages: num_stages of the unmasked key loops' tl.range (0: the launch's num_stages).
- k_new / v_new (tensors): the step's own K (rotated) and V, [T, Hkv, D]; the new tokens' keys, the causal part,
  are read from them (contiguous rows, no block tables) and only the cached prefix from the cache.
- tma_new (with k_new / v_new): those rows loaded by TMA (host tensor descriptors) instead of pointer loads.

Key runs before the tile's first query go through with no masks at all (whole BLOCK_N runs inside the context);
only the diagonal runs mask, with one comparison (keys past the context are past every valid row's position).
An fp8 cache is converted by Triton's cast (the "cast" mode of kernels/attention_block.py)."""

import torch
import triton
import triton.language as tl

PACKED_DEFAULTS = dict(block_m=128, block_n=64, num_warps=8, num_stages=3, pack=0, k_natural=True, page_addr=True,
                       scale_q=True, loop_stages=0, tma_new=False)  # pack 0: the whole GQA group
_INTERPRET_DEFAULTS = dict(block_m=16, block_n=16, num_warps=1, num_stages=1)
MIN_BLOCK_B = 256  # as in kernels/prefill_attention.py: one compiled width up to 256 sequences


@triton.jit
def _kv_offsets(bt_row, n0, head_off, kv_end, stride_cb, stride_ct,
                BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_ADDR: tl.constexpr, MASKED: tl.constexpr):
    """Element offsets of keys [n0, n0 + BLOCK_N) of one KV head in the paged cache."""
    if PAGE_ADDR:
        pages = n0 // BLOCK_SIZE + tl.arange(0, BLOCK_N // BLOCK_SIZE)
        if MASKED:
            blk = tl.load(bt_row + pages, mask=pages * BLOCK_SIZE < kv_end, other=0).to(tl.int64)
        else:
            blk = tl.load(bt_row + pages).to(tl.int64)
        tok = blk[:, None] * stride_cb + tl.arange(0, BLOCK_SIZE)[None, :] * stride_ct
        return tl.reshape(tok, [BLOCK_N]) + head_off
    offs_n = n0 + tl.arange(0, BLOCK_N)
    if MASKED:
        blk = tl.load(bt_row + offs_n // BLOCK_SIZE, mask=offs_n < kv_end, other=0).to(tl.int64)
    else:
        blk = tl.load(bt_row + offs_n // BLOCK_SIZE).to(tl.int64)
    return blk * stride_cb + (offs_n % BLOCK_SIZE) * stride_ct + head_off


@triton.jit
def _step(q, m_i, l_i, acc, offs_n, nmask, tok, k_ptr, v_ptr, q_lim, qk_scale, offs_d, MASKED: tl.constexpr,
          K_NATURAL: tl.constexpr, SCALE_Q: tl.constexpr, PRECISION: tl.constexpr, k_desc=None, v_desc=None,
          desc_row=0, desc_col=0, TMA: tl.constexpr = False):
    """One BLOCK_N run of keys (element offsets tok) of the online softmax; MASKED: a run that may reach past a
    row's last key (q_lim) or past the span (nmask false: not loaded). TMA: K and V rows [desc_row, + BLOCK_N) of
    the step's k / v through tensor descriptors instead (rows past the sequence are masked by q_lim, past T zeros)."""
    if TMA:
        k = tl.trans(k_desc.load([desc_row, desc_col]).to(q.dtype))
    elif K_NATURAL:
        if MASKED:
            k = tl.load(k_ptr + tok[:, None] + offs_d[None, :], mask=nmask[:, None], other=0.0)
        else:
            k = tl.load(k_ptr + tok[:, None] + offs_d[None, :])
        k = tl.trans(k.to(q.dtype))
    else:
        if MASKED:
            k = tl.load(k_ptr + tok[None, :] + offs_d[:, None], mask=nmask[None, :], other=0.0)
        else:
            k = tl.load(k_ptr + tok[None, :] + offs_d[:, None])
        k = k.to(q.dtype)
    s = tl.dot(q, k, input_precision=PRECISION)  # log2 domain: qk_scale folds in log2(e)
    if not SCALE_Q:
        s = s * qk_scale
    if MASKED:  # q_lim: each valid row's last key, inside the span, so one comparison covers both masks
        s = tl.where(offs_n[None, :] <= q_lim[:, None], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if TMA:
        v = v_desc.load([desc_row, desc_col])
    elif MASKED:
        v = tl.load(v_ptr + tok[:, None] + offs_d[None, :], mask=nmask[:, None], other=0.0)
    else:
        v = tl.load(v_ptr + tok[:, None] + offs_d[None, :])
    acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _offsets(n0, end, bt_row, row0, head_off, stride_b, stride_t, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
             PAGE_ADDR: tl.constexpr, OWN: tl.constexpr, MASKED: tl.constexpr):
    """Element offsets of keys [n0, n0 + BLOCK_N): in the paged cache, or (OWN) rows row0 + n of the step's k/v."""
    if OWN:
        return (row0 + n0 + tl.arange(0, BLOCK_N)).to(tl.int64) * stride_t + head_off
    return _kv_offsets(bt_row, n0, head_off, end, stride_b, stride_t, BLOCK_SIZE, BLOCK_N, PAGE_ADDR, MASKED)


@triton.jit
def _span(q, m_i, l_i, acc, k_ptr, v_ptr, bt_row, row0, head_off, stride_b, stride_t, q_lim, qk_scale, offs_d,
          unmasked_end, end, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, K_NATURAL: tl.constexpr,
          PAGE_ADDR: tl.constexpr, SCALE_Q: tl.constexpr, PRECISION: tl.constexpr, LOOP_STAGES: tl.constexpr,
          OWN: tl.constexpr, k_desc=None, v_desc=None, desc_col=0, TMA: tl.constexpr = False):
    """Keys [0, end) of one source: whole unmasked runs up to unmasked_end (every key there at or before every
    row's q_lim), then masked runs."""
    if LOOP_STAGES > 0:
        for n0 in tl.range(0, unmasked_end, BLOCK_N, num_stages=LOOP_STAGES):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            tok = _offsets(n0, end, bt_row, row0, head_off, stride_b, stride_t, BLOCK_SIZE, BLOCK_N, PAGE_ADDR, OWN,
                           False)
            m_i, l_i, acc = _step(q, m_i, l_i, acc, offs_n, offs_n < end, tok, k_ptr, v_ptr, q_lim, qk_scale, offs_d,
                                  False, K_NATURAL, SCALE_Q, PRECISION, k_desc, v_desc, row0 + n0, desc_col, TMA)
    else:
        for n0 in range(0, unmasked_end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            tok = _offsets(n0, end, bt_row, row0, head_off, stride_b, stride_t, BLOCK_SIZE, BLOCK_N, PAGE_ADDR, OWN,
                           False)
            m_i, l_i, acc = _step(q, m_i, l_i, acc, offs_n, offs_n < end, tok, k_ptr, v_ptr, q_lim, qk_scale, offs_d,
                                  False, K_NATURAL, SCALE_Q, PRECISION, k_desc, v_desc, row0 + n0, desc_col, TMA)
    for n0 in range(unmasked_end, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        tok = _offsets(n0, end, bt_row, row0, head_off, stride_b, stride_t, BLOCK_SIZE, BLOCK_N, PAGE_ADDR, OWN, True)
        m_i, l_i, acc = _step(q, m_i, l_i, acc, offs_n, offs_n < end, tok, k_ptr, v_ptr, q_lim, qk_scale, offs_d,
                              True, K_NATURAL, SCALE_Q, PRECISION, k_desc, v_desc, row0 + n0, desc_col, TMA)
    return m_i, l_i, acc


# Not specialized on B or the metadata pointers, for the reasons given in kernels/prefill_attention.py.
@triton.jit(do_not_specialize=["B", "block_tables_ptr", "cu_seqlens_ptr", "context_lens_ptr", "stride_bt"])
def _prefill_packed_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, cu_seqlens_ptr, context_lens_ptr, out_ptr,
    k_scale_ptr, v_scale_ptr, k_new_ptr, v_new_ptr, k_desc, v_desc, qk_scale, B,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_cb, stride_ct, stride_ch, stride_bt, stride_nt, stride_nh,
    GROUP: tl.constexpr, PACK: tl.constexpr, D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr, DOT_F32: tl.constexpr,
    PRECISION: tl.constexpr, KV_FP8: tl.constexpr, K_NATURAL: tl.constexpr, PAGE_ADDR: tl.constexpr,
    SCALE_Q: tl.constexpr, LOOP_STAGES: tl.constexpr, OWN_KV: tl.constexpr, TMA_NEW: tl.constexpr,
):
    BLOCK_T: tl.constexpr = BLOCK_M // PACK  # tokens per tile
    tile = tl.program_id(0)
    head0 = tl.program_id(1) * PACK  # the first of this program's PACK query heads
    offs_b = tl.arange(0, BLOCK_B)
    bmask = offs_b < B
    q_starts = tl.load(cu_seqlens_ptr + offs_b, mask=bmask, other=0)
    n_new_all = tl.load(cu_seqlens_ptr + offs_b + 1, mask=bmask, other=0) - q_starts
    tiles_end = tl.cumsum(tl.where(bmask, tl.cdiv(n_new_all, BLOCK_T), 0), 0)
    seq = tl.sum((tiles_end <= tile).to(tl.int32), 0)
    if seq >= B:
        return  # the grid is an upper bound
    sel = offs_b == seq
    tile_in_seq = tl.sum(tl.where(sel, tiles_end, 0), 0) - 1 - tile  # heaviest tile first
    q_start = tl.sum(tl.where(sel, q_starts, 0), 0)
    n_new = tl.sum(tl.where(sel, n_new_all, 0), 0)
    ctx = tl.load(context_lens_ptr + seq)

    offs_r = tl.arange(0, BLOCK_M)
    offs_t = tile_in_seq * BLOCK_T + offs_r // PACK  # row r: token r // PACK, head head0 + r % PACK
    offs_d = tl.arange(0, D)
    mmask = offs_t < n_new
    rows = (q_start + offs_t).to(tl.int64)
    heads = head0 + offs_r % PACK
    q = tl.load(q_ptr + rows[:, None] * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                mask=mmask[:, None], other=0.0)
    if KV_FP8:  # scores of the stored keys times k_scale are the real keys' scores; the dots run in fp16
        qk_scale = qk_scale * tl.load(k_scale_ptr)
    if SCALE_Q:
        q = q.to(tl.float32) * qk_scale
    if DOT_F32:  # the interpreter gets bf16 tl.dot wrong; GPUs use the native dtype
        q = q.to(tl.float32)
    elif KV_FP8:
        q = q.to(tl.float16)
    else:
        q = q.to(q_ptr.dtype.element_ty)
    q_pos = ctx - n_new + offs_t

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    head_off = (head0 // GROUP).to(tl.int64) * stride_ch
    first_pos = ctx - n_new + tile_in_seq * BLOCK_T
    kv_end = tl.minimum(first_pos + BLOCK_T, ctx)  # one past the last key of the tile's last valid row
    if OWN_KV:  # the cached prefix from the cache (no causal mask there), the new tokens' keys from k_new / v_new
        prefix = ctx - n_new
        m_i, l_i, acc = _span(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row, 0, head_off, stride_cb, stride_ct,
                              tl.minimum(q_pos, prefix - 1), qk_scale, offs_d, (prefix // BLOCK_N) * BLOCK_N, prefix,
                              BLOCK_SIZE, BLOCK_N, K_NATURAL, PAGE_ADDR, SCALE_Q, PRECISION, LOOP_STAGES, False)
        first_new = tile_in_seq * BLOCK_T  # positions counted from the first new token
        m_i, l_i, acc = _span(q, m_i, l_i, acc, k_new_ptr, v_new_ptr, bt_row, q_start,
                              (head0 // GROUP).to(tl.int64) * stride_nh, 0, stride_nt, offs_t, qk_scale, offs_d,
                              ((first_new + 1) // BLOCK_N) * BLOCK_N, kv_end - prefix,
                              BLOCK_SIZE, BLOCK_N, K_NATURAL, PAGE_ADDR, SCALE_Q, PRECISION, LOOP_STAGES, True,
                              k_desc, v_desc, (head0 // GROUP) * D, TMA_NEW)
    else:
        m_i, l_i, acc = _span(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row, 0, head_off, stride_cb, stride_ct,
                              q_pos, qk_scale, offs_d, ((first_pos + 1) // BLOCK_N) * BLOCK_N, kv_end,
                              BLOCK_SIZE, BLOCK_N, K_NATURAL, PAGE_ADDR, SCALE_Q, PRECISION, LOOP_STAGES, False)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    if KV_FP8:
        out = out * tl.load(v_scale_ptr)
    tl.store(out_ptr + rows[:, None] * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mmask[:, None])


def packed_config(q: torch.Tensor, group: int, overrides: dict) -> dict:
    """The launch settings: PACKED_DEFAULTS (small tiles under the interpreter) with the overrides on top."""
    cfg = dict(PACKED_DEFAULTS, **(_INTERPRET_DEFAULTS if not q.is_cuda else {}))
    cfg.update(overrides)
    cfg["pack"] = cfg["pack"] or group
    assert group % cfg["pack"] == 0 and triton.next_power_of_2(cfg["pack"]) == cfg["pack"] <= cfg["block_m"], cfg
    assert cfg.get("fp8_mode", "cast") == "cast" and not cfg.get("split_tail"), "packed: fp8 cast only, no split_tail"
    return cfg


def launch_packed(q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, out, k_scale, v_scale, kv_fp8,
                  qk_scale: float, precision: str, overrides: dict) -> torch.Tensor:
    """paged_prefill_attention's variant="packed" (its checks and scale handling already done). Overrides k_new and
    v_new ([T, Hkv, D], k rotated: rotary_store_kv(..., k_in_place=True)) make the new tokens' keys come from them
    instead of the cache (OWN_KV); the cache then serves only the cached prefixes."""
    T, HQ, D = q.shape
    block_size, HKV = k_cache.shape[1], k_cache.shape[2]
    B = context_lens.shape[0]
    overrides = dict(overrides)
    k_new, v_new = overrides.pop("k_new", None), overrides.pop("v_new", None)
    own = k_new is not None
    if own:
        assert v_new is not None and not kv_fp8, "k_new needs v_new, and a cache in q's dtype"
        assert k_new.shape == v_new.shape == (T, HKV, D) and k_new.stride() == v_new.stride() and k_new.stride(2) == 1
    cfg = packed_config(q, HQ // HKV, overrides)
    bn, pack = cfg["block_n"], cfg["pack"]
    tma = cfg["tma_new"]
    descs = (q, q)
    if tma:  # [T, Hkv * D] views of k_new / v_new, one [BLOCK_N, D] box per load
        assert own and k_new.stride(1) == D, "tma_new needs k_new / v_new with heads side by side"
        from triton.tools.tensor_descriptor import TensorDescriptor  # only here: older Tritons lack it
        descs = tuple(TensorDescriptor(t, [T, HKV * D], [t.stride(0), 1], [bn, D]) for t in (k_new, v_new))
    if cfg["page_addr"]:
        assert bn % block_size == 0, "page_addr needs block_n a multiple of the cache block size"
    block_t = cfg["block_m"] // pack
    grid = (triton.cdiv(T, block_t) + B, HQ // pack)
    _prefill_packed_kernel[grid](
        q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, out, k_scale, v_scale,
        k_new if own else q, v_new if own else q, *descs, qk_scale, B,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        k_new.stride(0) if own else 0, k_new.stride(1) if own else 0,
        GROUP=HQ // HKV, PACK=pack, D=D, BLOCK_SIZE=block_size, BLOCK_M=cfg["block_m"], BLOCK_N=bn,
        BLOCK_B=max(MIN_BLOCK_B, triton.next_power_of_2(B)), DOT_F32=not q.is_cuda, PRECISION=precision,
        KV_FP8=kv_fp8, K_NATURAL=cfg["k_natural"], PAGE_ADDR=cfg["page_addr"], SCALE_Q=cfg["scale_q"],
        LOOP_STAGES=cfg["loop_stages"], OWN_KV=own, TMA_NEW=tma, num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return out
