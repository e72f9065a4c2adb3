"""Attention over the paged KV cache, and the per-step metadata every layer reads.

Two backends behind one seam, chosen when a layer is built (engine.layers.backend): Triton kernels on
CUDA (kernels/), plain torch on the CPU. The runner runs the model inside `with attention_context(meta)`;
each layer's Attention module writes its new K/V into its cache slots and attends through the block tables.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.layers.backend import building_on_cuda
from engine.layers.kv_quant import FP8_KV, store_kv


@dataclass
class FixedRows:
    """A step with prompt tokens inside a CUDA graph (engine/mixed_graphs.py), whose row counts are fixed at
    capture: the decode kernel runs over rows [0, decode_rows) with the metadata's context_lens and block_tables
    (context 0 past the step's real decodes); the prefill kernel over MAX_PROMPT_SEQS prompt sequences (padding
    ones have no new tokens), whose cu_seqlens hold absolute rows of q."""
    decode_rows: int
    prompt_cu_seqlens: torch.Tensor  # [P+1] int32
    prompt_context_lens: torch.Tensor  # [P] int32
    prompt_block_tables: torch.Tensor  # [P, max_blocks] int32


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64: cache slot of each new token
    block_tables: torch.Tensor  # [B, max_blocks] int32
    context_lens: torch.Tensor  # [B] int32: tokens in the cache after this step, new ones included
    cu_seqlens_q: torch.Tensor  # [B+1] int32: new tokens of sequence i are q[cu[i]:cu[i+1]]
    max_query_len: int
    max_context_len: int
    # Sequences [0, num_decode_seqs) have one new token each: a mixed step sends them through the decode
    # kernel (K/V read once per kv head) and only the rest through the prefill kernel.
    num_decode_seqs: int = 0
    # torch backend only: where each sequence's context lies, padded to the longest
    gather_slots: torch.Tensor | None = None  # [B, C] int64
    mask: torch.Tensor | None = None  # [B, 1, L, C] bool: query may see key
    q_rows: torch.Tensor | None = None  # [T] row of each new token in the padded [B * L] query block
    fixed_rows: FixedRows | None = None  # a step with prompt tokens in a CUDA graph (the Triton backend only)

    @property
    def is_decode(self) -> bool:
        return self.max_query_len == 1


def torch_backend_indices(query_lens: list[int], context_lens: list[int], block_tables: list[list[int]],
                          block_size: int, device) -> dict:
    """Precompute, once per step, the gathers and the causal mask the torch backend uses in every layer."""
    B, L, C = len(query_lens), max(query_lens), max(context_lens)
    pos = torch.arange(C)
    slots = torch.zeros(B, C, dtype=torch.int64)
    q_pos = torch.zeros(B, L, dtype=torch.int64)  # absolute position of each padded query row
    for i, (table, n) in enumerate(zip(block_tables, context_lens)):
        t = torch.tensor(table, dtype=torch.int64)
        slots[i, :n] = t[pos[:n] // block_size] * block_size + pos[:n] % block_size
        q_pos[i, :query_lens[i]] = torch.arange(n - query_lens[i], n)
    ctx = torch.tensor(context_lens)
    mask = (pos[None, None, :] <= q_pos[:, :, None]) & (pos[None, None, :] < ctx[:, None, None])
    q_rows = torch.cat([torch.arange(n) + i * L for i, n in enumerate(query_lens)])
    return dict(gather_slots=slots.to(device), mask=mask.unsqueeze(1).to(device), q_rows=q_rows.to(device))


_metadata: AttentionMetadata | None = None


@contextmanager
def attention_context(meta: AttentionMetadata):
    """The one way to give the layers a step's metadata: every Attention called inside the block reads it."""
    global _metadata
    assert _metadata is None, "attention contexts do not nest"
    _metadata = meta
    try:
        yield meta
    finally:
        _metadata = None


def current_attention_metadata() -> AttentionMetadata:
    assert _metadata is not None, "attention called outside attention_context()"
    return _metadata


def torch_paged_attention(q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float, k_scale=None,
                          v_scale=None) -> torch.Tensor:
    # index_select / index_copy_ rather than advanced indexing: the latter is many times slower on CPU.
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    flat_k, flat_v = k_cache.view(-1, num_kv_heads, head_dim), v_cache.view(-1, num_kv_heads, head_dim)
    store_kv(flat_k, meta.slot_mapping, k, k_scale)
    store_kv(flat_v, meta.slot_mapping, v, v_scale)
    B, C = meta.gather_slots.shape
    slots = meta.gather_slots.view(-1)
    keys = flat_k.index_select(0, slots).view(B, C, num_kv_heads, head_dim).transpose(1, 2)  # [B, Hkv, C, D]
    values = flat_v.index_select(0, slots).view(B, C, num_kv_heads, head_dim).transpose(1, 2)
    fp8 = k_cache.dtype == FP8_KV
    if fp8:  # dequantize: k_scale folds into the softmax scale, v_scale into the output
        keys, values, scale = keys.to(q.dtype), values.to(q.dtype), scale * float(k_scale)
    group = q.shape[1] // num_kv_heads
    if group > 1:
        keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
    L = meta.max_query_len
    if meta.is_decode:
        queries = q.view(B, 1, -1, head_dim)
    else:
        queries = q.new_zeros(B * L, q.shape[1], head_dim).index_copy_(0, meta.q_rows, q).view(B, L, -1, head_dim)
    out = F.scaled_dot_product_attention(queries.transpose(1, 2), keys, values, attn_mask=meta.mask,
                                         scale=scale).transpose(1, 2)
    if fp8:
        out = out * float(v_scale)
    if meta.is_decode:
        return out.reshape(B, -1, head_dim)
    return out.reshape(B * L, -1, head_dim).index_select(0, meta.q_rows)


def torch_attention(positions, q, k, v, rotary, k_cache, v_cache, meta: AttentionMetadata, scale: float,
                    k_scale=None, v_scale=None):
    q, k = rotary(positions, q, k)
    return torch_paged_attention(q, k, v, k_cache, v_cache, meta, scale, k_scale, v_scale)


def select_attention():
    """The attention a layer built now runs: on CUDA one kernel rotates q and k and writes k and v to the
    cache (kernels.rotary_store_kv), then the decode and/or prefill kernel; plain torch elsewhere."""
    if not building_on_cuda():
        return torch_attention
    return triton_attention


@functools.cache
def _triton_kernels():
    """Imported at the first call: only a CUDA build (or a kernel test) needs triton."""
    from kernels import paged_decode_attention, paged_prefill_attention, rotary_store_kv

    return paged_decode_attention, paged_prefill_attention, rotary_store_kv


def triton_attention(positions, q, k, v, rotary, k_cache, v_cache, meta: AttentionMetadata, scale: float,
                     k_scale=None, v_scale=None):
    paged_decode_attention, paged_prefill_attention, rotary_store_kv = _triton_kernels()
    scales = dict(k_scale=k_scale, v_scale=v_scale)  # read only for an fp8 cache
    rotary_store_kv(positions, q, k, v, rotary.cos_sin_cache, k_cache, v_cache, meta.slot_mapping, **scales)
    if meta.is_decode:
        return paged_decode_attention(q, k_cache, v_cache, meta.block_tables, meta.context_lens, scale, **scales)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    fixed = meta.fixed_rows
    if fixed is not None:  # in a CUDA graph: the decode/prompt split is data (rows past it attend to nothing)
        nd = fixed.decode_rows
        paged_decode_attention(q[:nd], k_cache, v_cache, meta.block_tables, meta.context_lens, scale,
                               max_context_len=meta.max_context_len, out=out[:nd], **scales)
        return paged_prefill_attention(q, k_cache, v_cache, fixed.prompt_block_tables, fixed.prompt_cu_seqlens,
                                       fixed.prompt_context_lens, scale, out=out, **scales)
    nd = meta.num_decode_seqs
    if nd:  # the decode rows are q[:nd] (one token each, first in the batch)
        paged_decode_attention(q[:nd], k_cache, v_cache, meta.block_tables[:nd], meta.context_lens[:nd], scale,
                               max_context_len=meta.max_context_len, out=out[:nd], **scales)
    # cu_seqlens_q holds absolute rows of q, so the prefill kernel takes the remaining sequences as they are
    return paged_prefill_attention(q, k_cache, v_cache, meta.block_tables[nd:], meta.cu_seqlens_q[nd:],
                                   meta.context_lens[nd:], scale, out=out, **scales)


class Attention(nn.Module):
    """Paged attention for one layer; the runner assigns k_cache and v_cache after allocating the pool.

    k_scale and v_scale: the layer's fp8 KV scales (float32 scalars, 1.0 unless a checkpoint's calibrated ones
    are copied in: engine.layers.kv_quant.kv_scale_buffer_name), read by the kernels from the device, so CUDA
    graphs need no recapture. Buffers, not parameters: no checkpoint has to bring them. Unused by a cache in the
    model's dtype."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim, self.scale = num_heads, num_kv_heads, head_dim, scale
        self.k_cache = self.v_cache = torch.empty(0)
        self.register_buffer("k_scale", torch.ones((), dtype=torch.float32))
        self.register_buffer("v_scale", torch.ones((), dtype=torch.float32))
        self.attend = select_attention()

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                rotary) -> torch.Tensor:
        """q [T, Hq, D], k and v [T, Hkv, D] before the rotary embedding (strided views of the fused qkv
        output are fine) -> [T, Hq, D]."""
        return self.attend(positions, q, k, v, rotary, self.k_cache, self.v_cache, current_attention_metadata(),
                           self.scale, self.k_scale, self.v_scale)
