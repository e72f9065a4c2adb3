"""kernels/prefill_packed.py (paged_prefill_attention's variant="packed") against the torch reference in the
interpreter: every switch both ways, GQA groups 1 / 4 / 8 with packs that divide them, cached prefixes, zero-length
sequences, rows of q before the first sequence, fp32, bf16 and an fp8 cache; the new tokens' K/V read from the
step's own k / v (with kernels/rotary.py's k_in_place), by pointers and by TMA; then what it rejects and how
the defaults are routed (TUNED).
The variants also compile for sm_90: tests/kernels/test_prefill_variants_sm90.py."""
import pytest
import torch

from engine.layers.rotary import build_cos_sin_cache
from kernels import apply_rotary_ref, paged_prefill_attention, paged_prefill_attention_ref, rotary_store_kv
from kernels.prefill_attention import LONG_TOKENS, TUNED, tuned_overrides
from kernels.rotary import quantize_kv_ref
from tests.kernels.test_attention import BLOCK, make_paged_cache

NEW = [1, 15, 0, 17, 33, 0]  # on and around block boundaries, and two rows with no new tokens
PREFIX = [16, 5, 9, 0, 32, 0]
ALL_OFF = dict(k_natural=False, page_addr=False, scale_q=False)


def _case(group, head_dim=32, dtype=torch.float32, seed=0, new=NEW, prefix=PREFIX):
    hkv = 1 if group == 8 else 2
    k, v, bt, ctx = make_paged_cache([n + p for n, p in zip(new, prefix)], BLOCK, hkv, head_dim, dtype=dtype,
                                     seed=seed)
    cu = torch.zeros(len(new) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(new).cumsum(0)
    q = torch.randn(sum(new), hkv * group, head_dim, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return q, k, v, bt, cu, ctx


@pytest.mark.parametrize("group,overrides", [
    (4, dict(block_m=64)),  # the packed defaults (the whole group per program, every switch on), 16 tokens a tile
    (4, dict(pack=1, block_m=32, block_n=32)),
    (4, dict(pack=2, block_m=32, block_n=32, loop_stages=2)),
    (4, dict(ALL_OFF, block_m=32, block_n=32)),
    (8, dict(block_m=64, block_n=32)),
    (1, dict(ALL_OFF, loop_stages=3)),
])
def test_packed_matches_reference(group, overrides):
    q, k, v, bt, cu, ctx = _case(group, seed=group)
    out = torch.full_like(q, float("nan"))
    res = paged_prefill_attention(q, k, v, bt, cu, ctx, 0.2, out=out, variant="packed", **overrides)
    assert res is out
    torch.testing.assert_close(out, paged_prefill_attention_ref(q, k, v, bt, cu, ctx, 0.2), rtol=1e-3, atol=1e-4)


def test_packed_head_dim_128_long_prefix():
    # D as in the 8B model, and a prefix over several BLOCK_N runs (the unmasked loop runs more than once)
    q, k, v, bt, cu, ctx = _case(4, head_dim=128, seed=5, new=[20, 0, 3], prefix=[70, 100, 33])
    out = paged_prefill_attention(q, k, v, bt, cu, ctx, 128 ** -0.5, variant="packed", block_m=32, block_n=32)
    torch.testing.assert_close(out, paged_prefill_attention_ref(q, k, v, bt, cu, ctx, 128 ** -0.5),
                               rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("overrides", [{}, ALL_OFF])
def test_packed_bf16(overrides):
    q, k, v, bt, cu, ctx = _case(4, dtype=torch.bfloat16, seed=7)
    out = paged_prefill_attention(q, k, v, bt, cu, ctx, 0.2, variant="packed", block_m=32, block_n=32, **overrides)
    ref = paged_prefill_attention_ref(q.float(), k.float(), v.float(), bt, cu, ctx, 0.2)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("overrides", [{}, ALL_OFF])
def test_packed_reads_fp8(overrides):
    q, k, v, bt, cu, ctx = _case(4, seed=9)
    ks, vs = torch.tensor(0.37), torch.tensor(0.21)
    k8, v8 = quantize_kv_ref(k, ks), quantize_kv_ref(v, vs)
    out = paged_prefill_attention(q, k8, v8, bt, cu, ctx, 0.2, k_scale=ks, v_scale=vs, variant="packed",
                                  block_m=32, block_n=32, **overrides)
    ref = paged_prefill_attention_ref(q, k8, v8, bt, cu, ctx, 0.2, ks, vs)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)


def test_rows_before_the_first_sequence_are_left_alone():
    # a mixed step passes cu_seqlens from its first prefill row on (the decode rows come first in q and out)
    q, k, v, bt, cu, ctx = _case(4, seed=2, new=[0, 5, 0], prefix=[3, 1, 0])
    q = torch.cat([torch.randn(3, *q.shape[1:]), q])
    out = torch.full_like(q, 7.0)
    paged_prefill_attention(q, k, v, bt, cu + 3, ctx, 0.2, out=out, variant="packed")
    assert torch.all(out[:3] == 7.0)
    torch.testing.assert_close(out[3:], paged_prefill_attention_ref(q[3:], k, v, bt, cu, ctx, 0.2), rtol=1e-3,
                               atol=1e-4)


def test_packed_rejects_what_it_cannot_do():
    q, k, v, bt, cu, ctx = _case(4, seed=3)
    with pytest.raises(AssertionError):
        paged_prefill_attention(q, k, v, bt, cu, ctx, 0.2, variant="packed", pack=3)  # not a divisor of the group
    with pytest.raises(AssertionError):
        paged_prefill_attention(q, k, v, bt, cu, ctx, 0.2, variant="packed", block_n=8)  # page_addr: whole pages
    with pytest.raises(AssertionError):
        paged_prefill_attention(q, k, v, bt, cu, ctx, 0.2, variant="fast")


def test_tuned_overrides_split_long_from_short_batches():
    assert tuned_overrides(LONG_TOKENS * 8, 8) is TUNED["long"]  # 8 fresh prompts of LONG_TOKENS
    assert tuned_overrides(8 * 128, 8) is TUNED["short"]  # extends of 128 over a cached prefix
    assert tuned_overrides(LONG_TOKENS - 1, 1) is TUNED["short"]


def _own_kv(k_cache, v_cache, bt, cu, ctx):
    """The new tokens' K/V gathered from the cache into [T, Hkv, D] rows, as the step's k and v hold them."""
    rows = []
    for b in range(ctx.shape[0]):
        n, c = int(cu[b + 1] - cu[b]), int(ctx[b])
        pos = torch.arange(c - n, c)
        slots = (bt[b].long()[pos // BLOCK], pos % BLOCK)
        rows.append((k_cache[slots], v_cache[slots]))
    return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])


@pytest.mark.parametrize("overrides", [dict(block_m=64), dict(ALL_OFF, pack=1, block_m=32, block_n=32),
                                       dict(block_m=64, tma_new=True)])
def test_own_kv_reads_the_new_keys_from_k_new(overrides):
    q, k, v, bt, cu, ctx = _case(4, seed=12)
    ref = paged_prefill_attention_ref(q, k, v, bt, cu, ctx, 0.2)
    k_new, v_new = _own_kv(k, v, bt, cu, ctx)
    for cache in (k, v):  # the new tokens' slots in the cache now hold junk
        for b in range(ctx.shape[0]):
            n, c = int(cu[b + 1] - cu[b]), int(ctx[b])
            pos = torch.arange(c - n, c)
            cache[bt[b].long()[pos // BLOCK], pos % BLOCK] = 1e4
    out = paged_prefill_attention(q, k, v, bt, cu, ctx, 0.2, variant="packed", k_new=k_new, v_new=v_new, **overrides)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("tma", [False, True])
def test_rotary_k_in_place_feeds_own_kv(tma):
    """rotary_store_kv(k_in_place=True) leaves k rotated as the cache holds it, so the packed kernel can take the
    step's k and v (views of one qkv output, as the model hands them) for the new tokens: the same output as
    reading everything from the cache."""
    new, prefix, hkv, hq, d = [5, 0, 19], [16, 3, 7], 2, 8, 32
    k_cache, v_cache, bt, ctx = make_paged_cache([n + p for n, p in zip(new, prefix)], BLOCK, hkv, d, seed=13)
    cu = torch.zeros(len(new) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(new).cumsum(0)
    T = sum(new)
    pos = torch.cat([torch.arange(p, p + n) for n, p in zip(new, prefix)])
    seq = torch.cat([torch.full((n,), b) for b, n in enumerate(new)])
    slots = bt[seq, pos // BLOCK].long() * BLOCK + pos % BLOCK
    cos_sin = build_cos_sin_cache(d, 256, 10000.0)
    g = torch.Generator().manual_seed(13)
    qkv = torch.randn(T, (hq + 2 * hkv) * d, generator=g)
    q, k, v = (t.view(T, -1, d) for t in qkv.split([hq * d, hkv * d, hkv * d], -1))
    q_ref, k_ref = q.clone(), k.clone()
    apply_rotary_ref(pos, q_ref, k_ref, cos_sin)
    rotary_store_kv(pos, q, k, v, cos_sin, k_cache, v_cache, slots, k_in_place=True)
    torch.testing.assert_close(k, k_ref, rtol=1e-5, atol=1e-5)
    own = paged_prefill_attention(q, k_cache, v_cache, bt, cu, ctx, 0.2, variant="packed", block_m=32, k_new=k,
                                  v_new=v, tma_new=tma)
    torch.testing.assert_close(own, paged_prefill_attention_ref(q, k_cache, v_cache, bt, cu, ctx, 0.2), rtol=1e-3,
                               atol=1e-4)


def test_own_kv_is_refused_where_it_does_not_apply():
    q, k, v, bt, cu, ctx = _case(4, seed=14)
    k_new, v_new = _own_kv(k, v, bt, cu, ctx)
    with pytest.raises(AssertionError, match="packed"):  # the base kernel has no such input
        paged_prefill_attention(q, k, v, bt, cu, ctx, 0.2, k_new=k_new, v_new=v_new)
    ks = torch.tensor(1.0)
    with pytest.raises(AssertionError, match="dtype"):  # an fp8 cache's new keys are the quantized ones
        paged_prefill_attention(q, quantize_kv_ref(k, ks), quantize_kv_ref(v, ks), bt, cu, ctx, 0.2, k_scale=ks,
                                v_scale=ks, variant="packed", k_new=k_new, v_new=v_new)
