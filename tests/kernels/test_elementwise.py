import pytest
import torch

from engine.layers.rotary import build_cos_sin_cache
from kernels import (
    apply_rotary_ref,
    rms_norm,
    rms_norm_ref,
    rotary_store_kv,
    rotary_store_kv_ref,
    silu_and_mul,
    silu_and_mul_ref,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _tol(dtype):
    # The interpreter rounds bf16 by truncation: allow one bf16 ulp there.
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(dtype, with_residual):
    x = torch.randn(7, 200).to(dtype)
    w = (1 + 0.1 * torch.randn(200)).to(dtype)
    res = torch.randn(7, 200).to(dtype) if with_residual else None
    out = rms_norm(x, w, 1e-6, residual=res)
    ref = rms_norm_ref(x, w, 1e-6, residual=res)
    if with_residual:
        torch.testing.assert_close(out[1], ref[1], **_tol(dtype))
        out, ref = out[0], ref[0]
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref, **_tol(dtype))


def test_rms_norm_ref_matches_hf():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    norm = LlamaRMSNorm(64, eps=1e-5).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(64))
    x = torch.randn(5, 64).to(torch.bfloat16)
    assert torch.equal(norm(x), rms_norm_ref(x, norm.weight, 1e-5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(dtype):
    x = torch.randn(5, 2 * 300).to(dtype)
    out = silu_and_mul(x)
    assert out.shape == (5, 300) and out.dtype == dtype
    torch.testing.assert_close(out, silu_and_mul_ref(x), **_tol(dtype))


@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim,hq,hkv", [(64, 8, 2), (128, 4, 4)])
def test_rotary_store_kv_matches_torch(dtype, head_dim, hq, hkv, slot_dtype):
    T, bs, blocks = 6, 4, 4
    cache = build_cos_sin_cache(head_dim, 4096, 500000.0)
    qkv = torch.randn(T, (hq + 2 * hkv) * head_dim).to(dtype)
    # q, k and v as strided views of a fused qkv projection, as the engine passes them.
    q, k, v = (t.view(T, -1, head_dim) for t in qkv.split([hq * head_dim, hkv * head_dim, hkv * head_dim], -1))
    pos = torch.tensor([0, 1, 17, 100, 2047, 4095])
    slots = torch.tensor([3, 0, -1, 9, 15, 4], dtype=slot_dtype)  # -1: a padding token, which must not touch the cache
    caches = [torch.randn(blocks, bs, hkv, head_dim).to(dtype) for _ in range(2)]
    q_ref, caches_ref = q.clone(), [c.clone() for c in caches]
    k_before = k.clone()
    rotary_store_kv(pos, q, k, v, cache, *caches, slots)
    rotary_store_kv_ref(pos, q_ref, k_before.clone(), v, cache, *caches_ref, slots)
    torch.testing.assert_close(q, q_ref, **_tol(dtype))
    torch.testing.assert_close(caches[0], caches_ref[0], **_tol(dtype))
    assert torch.equal(caches[1], caches_ref[1])  # v is copied, not computed
    assert torch.equal(k, k_before)
    untouched = torch.ones(blocks * bs, dtype=torch.bool)
    untouched[slots[slots >= 0].long()] = False
    for c, before in zip(caches, caches_ref):  # slots no token names keep what they held
        assert torch.equal(c.view(blocks * bs, -1)[untouched], before.view(blocks * bs, -1)[untouched])


def test_rotary_ref_matches_hf():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    cache = build_cos_sin_cache(64, 64, 10000.0)
    q, k = torch.randn(1, 4, 10, 64), torch.randn(1, 2, 10, 64)
    pos = torch.arange(10)
    cos, sin = cache[pos, :32].repeat(1, 2)[None], cache[pos, 32:].repeat(1, 2)[None]
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos, sin)
    q2, k2 = q[0].transpose(0, 1).clone(), k[0].transpose(0, 1).clone()
    apply_rotary_ref(pos, q2, k2, cache)
    torch.testing.assert_close(q2, q_hf[0].transpose(0, 1))
    torch.testing.assert_close(k2, k_hf[0].transpose(0, 1))


@pytest.mark.parametrize("scaling", [None, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}])
def test_cos_sin_cache_matches_transformers(scaling):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    params = ({"rope_type": "default", "rope_theta": 500000.0} if scaling is None
              else {**scaling, "rope_theta": 500000.0})
    cfg = LlamaConfig(hidden_size=256, num_attention_heads=2, max_position_embeddings=131072, rope_parameters=params)
    if scaling is None:
        inv_freq, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
    else:
        inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    pos = torch.tensor([0, 1, 5000, 131071])
    freqs = pos[:, None].float() * inv_freq[None, :]
    cache = build_cos_sin_cache(128, 131072, 500000.0, scaling)
    assert torch.equal(cache[pos], torch.cat((freqs.cos(), freqs.sin()), dim=-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_argmax_matches_torch_with_ties(dtype):
    from kernels import argmax, argmax_ref

    torch.manual_seed(0)
    x = torch.randint(-20, 20, (6, 300)).to(dtype)  # small integers: many ties, across chunks of 64 too
    x[1] = float("-inf")  # torch gives 0
    x[2, 5] = x[2, 250] = 100  # the same maximum in two chunks: the first wins
    x[3, :] = 7  # all equal
    x[4, 299] = 50  # in the last, partial chunk
    got = argmax(x)
    assert got.dtype == torch.int64
    assert torch.equal(got, argmax_ref(x)), (got, argmax_ref(x))
    assert got[2] == 5 and got[4] == 299
