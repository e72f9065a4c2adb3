"""Paged decode attention (one query token per sequence), flash-decoding style.

Each program owns one (sequence, kv head, split): it reads that split's share of the sequence's
K/V once and serves all GROUP query heads of the kv head with it (GQA), so K/V bytes are read
exactly once. A split's share is ceil(context_len / num_splits) tokens, computed in the kernel
from the sequence's own length: the launch shape depends only on tensor shapes, so it is CUDA
graph friendly, and short sequences simply leave their trailing splits idle. When more than one
split is used, a second small kernel merges the partial softmax states.
"""

import torch
import triton
import triton.language as tl

from kernels.attention_block import attend, dot_precision, fp8_mode, is_fp8, kv_scales
from kernels.pdl import launch_options, pdl_start

# From the H200 sweep at online-serving sizes (benchmarks/decode_online.py, docs/perf-kernels.md): 128-token runs
# on 3 stages, and about 4 programs per SM (512 at 132 SMs): 16 splits at batch 1-4 ... 1 split from batch 64.
DEFAULTS = dict(block_n=128, num_warps=4, num_stages=3, waves=4, max_splits=64, min_partition=256)
# An fp8 cache: a key run of the same bytes is twice as many tokens; fp8_mode: see kernels/attention_block.py.
# benchmarks/kv_fp8.py sweeps them (H200, batch 64 x 2048: block_n 128 best, the three modes within 4%).
# split_tail: whole BLOCK_N runs without masks, then the partial one.
FP8_DEFAULTS = dict(DEFAULTS, block_n=64, num_warps=2, fp8_mode="cast", split_tail=True)
_INTERPRET_DEFAULTS = dict(block_n=16, num_warps=1, num_stages=1, waves=1, max_splits=8, min_partition=16)

_NUM_SMS: dict[int, int] = {}


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 16  # the interpreter: small, so that tests exercise several splits
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _NUM_SMS:
        _NUM_SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _NUM_SMS[idx]


@triton.jit
def _partition_len(ctx, num_splits, BLOCK_N: tl.constexpr):
    part = tl.cdiv(tl.cdiv(ctx, num_splits), BLOCK_N) * BLOCK_N
    return tl.maximum(part, BLOCK_N)


# The split count and the block-table width vary step to step (eager steps pad tables to their longest sequence):
# neither is specialized on, so no new batch compiles a new variant (a first-use compile stalls a live server for
# a second or more; only SINGLE_SPLIT picks one of two).
@triton.jit(do_not_specialize=["num_splits", "stride_bt"])
def _decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr,
    out_ptr, acc_ws_ptr, ml_ws_ptr, k_scale_ptr, v_scale_ptr,
    qk_scale, num_splits, HQ,
    stride_qb, stride_qh, stride_ob, stride_oh,
    stride_cb, stride_ct, stride_ch, stride_bt,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr, SINGLE_SPLIT: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
    KV_FP8: tl.constexpr, FP8_MODE: tl.constexpr, SPLIT_TAIL: tl.constexpr, USE_PDL: tl.constexpr,
):
    pdl_start(USE_PDL)
    if KV_FP8:  # scores of the stored keys times k_scale are the real keys' scores
        qk_scale = qk_scale * tl.load(k_scale_ptr)
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    ctx = tl.load(context_lens_ptr + b)
    part = _partition_len(ctx, num_splits, BLOCK_N)
    start = split * part
    end = tl.minimum(start + part, ctx)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, D)
    heads = kvh * GROUP + offs_g
    gmask = offs_g < GROUP
    # Rows past GROUP are zero padding: tl.dot needs at least 16 rows.
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=gmask[:, None], other=0.0)
    if DOT_F32:  # the interpreter (triton 3.9) gets bf16 tl.dot wrong; GPUs use the native dtype
        q = q.to(tl.float32)
    elif KV_FP8:  # e4m3 -> fp16 is one instruction per pair (bf16 takes two more), and exact: the dots run in fp16
        q = q.to(tl.float16)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, D], tl.float32)
    bt_row = block_tables_ptr + b.to(tl.int64) * stride_bt
    head_off = kvh.to(tl.int64) * stride_ch
    # The one query sees every position up to the end of the context: as a causal mask at end - 1, the
    # mask also covers the split's last, partial block.
    last = tl.zeros([BLOCK_G], tl.int32) + end - 1
    if SPLIT_TAIL:  # whole runs of BLOCK_N first, with no masks at all; then the one partial run, masked
        full_end = start + tl.maximum(end - start, 0) // BLOCK_N * BLOCK_N
        m_i, l_i, acc = attend(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row, head_off, last, qk_scale,
                               start, full_end, end, stride_cb, stride_ct, offs_d, BLOCK_SIZE, BLOCK_N, False,
                               DOT_F32, PRECISION, FP8_MODE, False)
        m_i, l_i, acc = attend(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row, head_off, last, qk_scale,
                               full_end, end, end, stride_cb, stride_ct, offs_d, BLOCK_SIZE, BLOCK_N, True,
                               DOT_F32, PRECISION, FP8_MODE)
    else:
        m_i, l_i, acc = attend(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row, head_off, last, qk_scale,
                               start, end, end, stride_cb, stride_ct, offs_d, BLOCK_SIZE, BLOCK_N, True, DOT_F32,
                               PRECISION, FP8_MODE)
    if KV_FP8:  # the values' scale, once on the accumulator (the splits' merge is linear in it)
        acc = acc * tl.load(v_scale_ptr)

    if SINGLE_SPLIT:
        # A zero-length context yields zeros instead of 0/0.
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + b.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=gmask[:, None])
    else:
        if start < end:
            row = (b.to(tl.int64) * HQ + heads) * num_splits + split
            tl.store(acc_ws_ptr + row[:, None] * D + offs_d[None, :], acc, mask=gmask[:, None])
            tl.store(ml_ws_ptr + row * 2, m_i, mask=gmask)
            tl.store(ml_ws_ptr + row * 2 + 1, l_i, mask=gmask)


@triton.jit(do_not_specialize=["num_splits"])
def _reduce_kernel(
    out_ptr, acc_ws_ptr, ml_ws_ptr, context_lens_ptr,
    num_splits, HQ, stride_ob, stride_oh,
    D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr, USE_PDL: tl.constexpr,
):
    pdl_start(USE_PDL)
    b = tl.program_id(0)
    h = tl.program_id(1)
    ctx = tl.load(context_lens_ptr + b)
    n_valid = tl.cdiv(ctx, _partition_len(ctx, num_splits, BLOCK_N))
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, D)
    smask = offs_s < n_valid
    row = (b.to(tl.int64) * HQ + h) * num_splits + offs_s
    m = tl.load(ml_ws_ptr + row * 2, mask=smask, other=float("-inf"))
    l = tl.load(ml_ws_ptr + row * 2 + 1, mask=smask, other=0.0)
    m_max = tl.max(m, 0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)  # no valid split: avoid -inf - -inf
    w = tl.where(smask, tl.exp2(m - m_max), 0.0)
    acc = tl.load(acc_ws_ptr + row[:, None] * D + offs_d[None, :], mask=smask[:, None], other=0.0)
    denom = tl.sum(l * w, 0)
    out = tl.sum(acc * w[:, None], 0) / tl.where(denom > 0, denom, 1.0)
    tl.store(out_ptr + b.to(tl.int64) * stride_ob + h * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty))


def choose_num_splits(batch: int, num_kv_heads: int, max_context_len: int, device: torch.device,
                      cfg: dict) -> int:
    """The most (batch x kv head x split) programs that fill the GPU at most `waves` times over: a power of two
    (bounds compiled variants of the reduce), each split at least `min_partition` tokens long. Rounding down: past
    ~4 programs per SM a further split only adds merge traffic (batch 64 x 400: 1 split 41 us, 2 splits 47)."""
    want = max(1, cfg["waves"] * _num_sms(device) // (batch * num_kv_heads))
    cap = max(1, min(cfg["max_splits"], max_context_len // cfg["min_partition"]))
    return min(triton.next_power_of_2(want + 1) // 2, triton.next_power_of_2(cap + 1) // 2)


def workspace_numel(batch: int, num_q_heads: int, head_dim: int, num_splits: int) -> int:
    return batch * num_q_heads * num_splits * (head_dim + 2)


def paged_decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    context_lens: torch.Tensor, scale: float, max_context_len: int | None = None,
    num_splits: int | None = None, workspace: torch.Tensor | None = None, out: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None, **overrides,
) -> torch.Tensor:
    """q [B, Hq, D]; caches [blocks, block_size, Hkv, D]; block_tables [B, max_blocks] int32;
    context_lens [B] int32 (includes the current token). Returns [B, Hq, D] in q's dtype.
    An fp8 (e4m3) cache holds K / k_scale and V / v_scale: k_scale and v_scale are float32 scalar tensors.

    max_context_len (a host int, an upper bound) only sizes the split count; without it the
    block-table width is used. workspace: optional flat fp32 tensor of at least
    workspace_numel(B, Hq, D, num_splits) elements, for callers that preallocate."""
    B, HQ, D = q.shape
    _, block_size, HKV, Dk = k_cache.shape
    assert Dk == D and HQ % HKV == 0 and triton.next_power_of_2(D) == D
    assert k_cache.stride(3) == 1 and v_cache.stride() == k_cache.stride()
    if q.stride(2) != 1:
        q = q.contiguous()
    cfg = dict((FP8_DEFAULTS if is_fp8(k_cache) else DEFAULTS) if q.is_cuda else _INTERPRET_DEFAULTS)
    cfg.update(overrides)
    k_scale, v_scale, kv_fp8 = kv_scales(k_cache, k_scale, v_scale)
    if out is None:
        out = torch.empty((B, HQ, D), dtype=q.dtype, device=q.device)
    if B == 0:
        return out
    if max_context_len is None:
        max_context_len = block_tables.shape[1] * block_size
    if num_splits is None:
        num_splits = choose_num_splits(B, HKV, max_context_len, q.device, cfg)
    group = HQ // HKV
    block_g = max(16, triton.next_power_of_2(group))
    if num_splits > 1:
        need = workspace_numel(B, HQ, D, num_splits)
        if workspace is None:
            workspace = torch.empty(need, dtype=torch.float32, device=q.device)
        assert workspace.dtype == torch.float32 and workspace.numel() >= need
        acc_ws = workspace[: B * HQ * num_splits * D]
        ml_ws = workspace[B * HQ * num_splits * D: need]
    else:
        acc_ws = ml_ws = out  # unused
    qk_scale = scale * 1.4426950408889634  # exp(x) == exp2(x * log2(e))
    _decode_kernel[(B, HKV, num_splits)](
        q, k_cache, v_cache, block_tables, context_lens, out, acc_ws, ml_ws, k_scale, v_scale,
        qk_scale, num_splits, HQ,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        GROUP=group, BLOCK_G=block_g, D=D, BLOCK_SIZE=block_size, BLOCK_N=cfg["block_n"],
        SINGLE_SPLIT=num_splits == 1, DOT_F32=not q.is_cuda, PRECISION=dot_precision(q), KV_FP8=kv_fp8,
        FP8_MODE=fp8_mode(k_cache, q, cfg), SPLIT_TAIL=cfg.get("split_tail", False), num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
        **launch_options(q),
    )
    if num_splits > 1:
        _reduce_kernel[(B, HQ)](
            out, acc_ws, ml_ws, context_lens, num_splits, HQ, out.stride(0), out.stride(1),
            D=D, BLOCK_S=triton.next_power_of_2(max(cfg["max_splits"], num_splits)), BLOCK_N=cfg["block_n"],
            num_warps=4,  # BLOCK_S: one width for every split count (one compiled variant; masked loads cost ~nothing)
            **launch_options(q),
        )
    return out


def paged_decode_attention_ref(q, k_cache, v_cache, block_tables, context_lens, scale, k_scale=None,
                               v_scale=None) -> torch.Tensor:
    """Plain torch: gather each sequence's K/V from its blocks (times k_scale / v_scale, if given), softmax in
    fp32."""
    ks, vs = (1.0 if s is None else float(s) for s in (k_scale, v_scale))
    B, HQ, D = q.shape
    block_size, HKV = k_cache.shape[1], k_cache.shape[2]
    out = torch.zeros((B, HQ, D), dtype=torch.float32, device=q.device)
    for b in range(B):
        n = int(context_lens[b])
        if n == 0:
            continue
        pos = torch.arange(n, device=q.device)
        blocks = block_tables[b].long()[pos // block_size]
        k = k_cache[blocks, pos % block_size].float() * ks  # [n, Hkv, D]
        v = v_cache[blocks, pos % block_size].float() * vs
        k = k.repeat_interleave(HQ // HKV, dim=1)
        v = v.repeat_interleave(HQ // HKV, dim=1)
        s = torch.einsum("hd,nhd->hn", q[b].float(), k) * scale
        out[b] = torch.einsum("hn,nhd->hd", torch.softmax(s, dim=-1), v)
    return out.to(q.dtype)
