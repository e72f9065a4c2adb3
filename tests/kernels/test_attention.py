import pytest
import torch

from kernels import (
    paged_decode_attention,
    paged_decode_attention_ref,
    paged_prefill_attention,
    paged_prefill_attention_ref,
)
from kernels.decode_attention import workspace_numel


def make_paged_cache(ctx_lens, block_size, num_kv_heads, head_dim, dtype=torch.float32, spare_blocks=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    need = [(n + block_size - 1) // block_size for n in ctx_lens]
    num_blocks = sum(need) + spare_blocks
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    perm = torch.randperm(num_blocks, generator=g).tolist()
    # Width beyond the longest sequence, filled with junk ids, as the engine's padded tables are.
    block_tables = torch.full((len(ctx_lens), max(need + [1]) + 1), num_blocks - 1, dtype=torch.int32)
    it = iter(perm)
    for b, n in enumerate(need):
        for j in range(n):
            block_tables[b, j] = next(it)
    return k_cache, v_cache, block_tables, torch.tensor(ctx_lens, dtype=torch.int32)


BLOCK = 16
LENS = [1, 15, 16, 17, 33]  # on and around block boundaries


@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("num_splits", [1, 4])
def test_decode_matches_reference(group, head_dim, num_splits):
    hkv = 1 if group == 8 else 2  # keeps the interpreter quick; ratios 1 and 4 cover kv head indexing
    k_cache, v_cache, bt, ctx = make_paged_cache(LENS, BLOCK, hkv, head_dim, seed=group * head_dim)
    q = torch.randn(len(LENS), hkv * group, head_dim)
    scale = head_dim ** -0.5
    out = paged_decode_attention(q, k_cache, v_cache, bt, ctx, scale, num_splits=num_splits)
    ref = paged_decode_attention_ref(q, k_cache, v_cache, bt, ctx, scale)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)


def test_decode_default_splits_workspace_and_empty_slots():
    # context 0 stands for a padded batch slot (CUDA graphs): it must give zeros, not NaN.
    lens = [0, 40, 3, 64]
    k_cache, v_cache, bt, ctx = make_paged_cache(lens, BLOCK, 2, 64, seed=1)
    q = torch.randn(len(lens), 8, 64)
    ws = torch.empty(workspace_numel(len(lens), 8, 64, 8))
    out = torch.full((len(lens), 8, 64), float("nan"))
    res = paged_decode_attention(q, k_cache, v_cache, bt, ctx, 0.125, max_context_len=64, workspace=ws, out=out)
    assert res is out
    torch.testing.assert_close(out, paged_decode_attention_ref(q, k_cache, v_cache, bt, ctx, 0.125),
                               rtol=1e-3, atol=1e-4)
    assert torch.all(out[0] == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decode_half_precision(dtype):
    k_cache, v_cache, bt, ctx = make_paged_cache([17, 33], BLOCK, 2, 64, dtype=dtype, seed=2)
    q = torch.randn(2, 8, 64).to(dtype)
    out = paged_decode_attention(q, k_cache, v_cache, bt, ctx, 0.125, num_splits=2)
    ref = paged_decode_attention_ref(q.float(), k_cache.float(), v_cache.float(), bt, ctx, 0.125)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def _prefill_case(new, prefix, group, head_dim, seed, dtype=torch.float32):
    hkv = 1 if group == 8 else 2  # keeps the interpreter quick; ratios 1 and 4 cover kv head indexing
    ctx_lens = [n + p for n, p in zip(new, prefix)]
    k_cache, v_cache, bt, ctx = make_paged_cache(ctx_lens, BLOCK, hkv, head_dim, dtype=dtype, seed=seed)
    cu = torch.zeros(len(new) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(new).cumsum(0)
    q = torch.randn(sum(new), hkv * group, head_dim).to(dtype)
    return q, k_cache, v_cache, bt, cu, ctx


@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("with_prefix", [False, True])
def test_prefill_matches_reference(group, head_dim, with_prefix):
    new = [1, 15, 16, 17, 33]
    prefix = [16, 5, 17, 0, 32] if with_prefix else [0] * len(new)
    args = _prefill_case(new, prefix, group, head_dim, seed=group + head_dim + with_prefix)
    scale = head_dim ** -0.5
    out = paged_prefill_attention(*args, scale)
    ref = paged_prefill_attention_ref(*args, scale)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)


def test_prefill_larger_tiles_and_empty_sequence():
    # A sequence with no new tokens (cu_seqlens repeats) must be skipped; tiles wider than a block.
    new, prefix = [40, 0, 70, 1], [3, 9, 16, 30]
    args = _prefill_case(new, prefix, 4, 64, seed=7)
    out = paged_prefill_attention(*args, 0.125, block_m=32, block_n=32)
    torch.testing.assert_close(out, paged_prefill_attention_ref(*args, 0.125), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_prefill_half_precision(dtype):
    q, k, v, bt, cu, ctx = _prefill_case([17, 9], [0, 20], 4, 64, seed=3, dtype=dtype)
    out = paged_prefill_attention(q, k, v, bt, cu, ctx, 0.125)
    ref = paged_prefill_attention_ref(q.float(), k.float(), v.float(), bt, cu, ctx, 0.125)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_prefill_then_decode_agree():
    # The last new token of a prefill and a decode step at the same context see the same keys.
    q, k, v, bt, cu, ctx = _prefill_case([33, 16], [0, 17], 4, 64, seed=4)
    pre = paged_prefill_attention(q, k, v, bt, cu, ctx, 0.125)
    last = cu[1:].long() - 1
    dec = paged_decode_attention(q[last].contiguous(), k, v, bt, ctx, 0.125, num_splits=2)
    torch.testing.assert_close(pre[last], dec, rtol=1e-3, atol=1e-4)
