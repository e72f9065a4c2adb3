"""W4A16 layout, GEMV and GEMM (Triton interpreter) against the torch reference: partial blocks in N, K and M,
symmetric and asymmetric, group sizes from 32 to per-channel, bf16/fp16/fp32 activations."""
import pytest
import torch

from kernels.w4a16 import (
    pack_w4a16,
    plane_words,
    planes_per_group,
    unpack_w4a16,
    w4a16_dequantize,
    w4a16_linear,
    w4a16_linear_ref,
)
from kernels.w4a16_gemm import w4a16_gemm
from kernels.w4a16_gemv import w4a16_gemv


def _weights(n, k, group, symmetric, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k), generator=g)
    # Scales that are powers of two and small-integer activations keep every product and fp32 sum exact, so fp32
    # must match the reference exactly; 16-bit outputs differ at most by their final rounding.
    scales = 2.0 ** torch.randint(-3, 1, (n, k // group), generator=g).float()
    zeros = None if symmetric else torch.randint(0, 16, (n, k // group), generator=g)
    return q, scales, zeros, pack_w4a16(q, scales, zeros, group, dtype)


def _x(m, k, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-8, 9, (m, k), generator=g).float() / 4).to(dtype)


def _check(out, ref, dtype):
    assert out.dtype == dtype and out.shape == ref.shape
    if dtype == torch.float32:
        assert torch.equal(out, ref)
    else:
        torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("k,group", [(512, 128), (768, 64), (320, 32), (64, 64), (1024, 1024), (2048, 256)])
def test_pack_unpack_dequantize_roundtrip(k, group):
    q, scales, zeros, t = _weights(6, k, group, False, torch.float32)
    assert t.qweight.shape == (6, k // 8) and t.qweight.dtype == torch.int32
    assert torch.equal(unpack_w4a16(t), q.to(torch.int32))
    dense = (q.float() - zeros.float().repeat_interleave(group, 1)) * scales.repeat_interleave(group, 1)
    assert torch.equal(w4a16_dequantize(t, group), dense)
    _, _, _, sym = _weights(6, k, group, True, torch.bfloat16)
    assert torch.equal(sym.zeros, torch.full_like(sym.zeros, 8))


def test_layout_planes_are_contiguous_runs_of_k():
    # nibble i of word P b + j is k = 8 P b + P i + j (kernels/w4a16.py): the kernels rely on exactly this.
    k = 512
    q = (torch.arange(k) % 16).view(1, k).repeat(2, 1)
    t = pack_w4a16(q, torch.ones(2, 1), None, k, torch.float32)
    p = plane_words(k)
    word = int(t.qweight[0, p + 3]) & 0xFFFFFFFF  # block 1, j = 3
    assert [(word >> (4 * i)) & 0xF for i in range(8)] == [(8 * p + p * i + 3) % 16 for i in range(8)]


def test_planes_per_group_rules():
    assert plane_words(4096) == 32 and plane_words(896) == 16 and plane_words(64) == 8
    assert planes_per_group(4096, 128) == 4 and planes_per_group(4096, 32) == 1 and planes_per_group(4096, 256) == 8
    assert planes_per_group(14336, 14336) == 8 and planes_per_group(4096, 1024) == 8
    assert planes_per_group(4096, 16) == 0 and planes_per_group(4096, 384) == 0  # the reference takes these


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k,group,m,symmetric,bias", [
    (37, 512, 128, 1, False, True),  # partial row block; 2 blocks of 256 in one step
    (10, 768, 64, 3, True, False),  # 3 blocks: a partial step of blocks; several rows of x
    (9, 320, 32, 1, False, False),  # K = 320: 8-word planes, one group per plane
    (7, 1024, 1024, 2, False, True),  # per-channel scale
])
def test_gemv_matches_reference(dtype, n, k, group, m, symmetric, bias, **variant):
    _, _, _, t = _weights(n, k, group, symmetric, dtype)
    x = _x(m, k, dtype)
    b = (torch.randint(-8, 9, (n,)).float() / 2).to(dtype) if bias else None
    out = w4a16_gemv(x, t, group, b, block_n=4, block_b=2, num_warps=1, num_stages=1, **variant)
    _check(out, w4a16_linear_ref(x, t, group, b), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k,group,m,symmetric,bias", [
    (37, 512, 128, 5, False, True),  # partial tiles in M and N
    (40, 768, 64, 20, True, False),
    (24, 1024, 1024, 17, False, False),  # per-channel
    (33, 256, 32, 3, False, True),  # one group per plane
])
def test_gemm_matches_reference(dtype, n, k, group, m, symmetric, bias, **variant):
    _, _, _, t = _weights(n, k, group, symmetric, dtype)
    x = _x(m, k, dtype)
    b = (torch.randint(-8, 9, (n,)).float() / 2).to(dtype) if bias else None
    out = w4a16_gemm(x, t, group, b, **{**dict(block_m=16, block_n=16, num_warps=1, num_stages=1), **variant})
    _check(out, w4a16_linear_ref(x, t, group, b), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k,group,m,symmetric,bias", [(37, 512, 128, 2, False, True), (9, 320, 32, 1, True, False)])
def test_kernel_variants(dtype, n, k, group, m, symmetric, bias):
    # The GEMV's FEW_SHIFTS off (the plain variant the benchmark compares against) and without prefetch; the GEMM
    # with K over 2 programs.
    test_gemv_matches_reference(dtype, n, k, group, m, symmetric, bias, few_shifts=False)
    test_gemv_matches_reference(dtype, n, k, group, m, symmetric, bias, prefetch=False)
    test_gemm_matches_reference(dtype, n, k, group, max(m, 3), symmetric, bias, split_k=2)


@pytest.mark.parametrize("split", [2, 4])
def test_gemm_split_k_uneven(split):
    # 3 blocks of K over 4 splits (one program has none: its partial sum is zero) or 2; the bias added once, by the
    # sum.
    test_gemm_matches_reference(torch.float32, 24, 768, 128, 19, False, True, split_k=split)


@pytest.mark.parametrize("block_m,block_n", [(32, 16), (16, 64)])
def test_gemm_tiles_larger_than_the_problem(block_m, block_n):
    test_gemm_matches_reference(torch.bfloat16, 37, 512, 128, 21, False, True, block_m=block_m, block_n=block_n)


def test_gemv_and_gemm_with_ordinary_values():
    # Random scales and activations (not exact): bf16 within a few ulps of the float32 reference.
    torch.manual_seed(0)
    n, k, group = 48, 512, 128
    q = torch.randint(0, 16, (n, k))
    t = pack_w4a16(q, torch.rand(n, k // group) * 0.02 + 0.001, torch.randint(0, 16, (n, k // group)), group,
                   torch.bfloat16)
    ref_w = w4a16_dequantize(t, group)
    for m, fn in [(1, w4a16_gemv), (2, w4a16_gemv), (17, w4a16_gemm), (40, w4a16_gemm)]:
        x = torch.randn(m, k).to(torch.bfloat16)
        kw = dict(block_n=16, block_b=2, num_warps=1) if fn is w4a16_gemv else dict(block_m=16, block_n=16)
        out = fn(x, t, group, None, **kw).float()
        # The GEMM rounds the dequantized weight to bf16 (as the dense path does): compare with that. 1e-2, not
        # 2e-3: the interpreter truncates a cast to bf16 where a GPU rounds to nearest (benchmarks/w4a16_gemm.py
        # checks the GPU's result at the 8B shapes).
        ref = x.float() @ (ref_w if fn is w4a16_gemv else ref_w.to(torch.bfloat16).float()).t()
        assert (out - ref).norm() / ref.norm() < 1e-2


def test_linear_on_cpu_is_the_reference_for_any_shape():
    _, _, _, t = _weights(5, 384, 128, False, torch.float32)
    x = _x(4, 384, torch.float32).view(2, 2, 384)
    out = w4a16_linear(x.view(4, 384), t, 128)
    assert torch.equal(out, w4a16_linear_ref(x.view(4, 384), t, 128))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k,group", [(37, 768, 128), (9, 320, 32), (20, 1024, 1024)])
def test_dense_dequantization_matches_reference(dtype, n, k, group):
    from kernels.w4a16_dequant import w4a16_dequantize_dense
    _, _, _, t = _weights(n, k, group, False, dtype)
    out = w4a16_dequantize_dense(t, group, dtype)
    assert out.dtype == dtype and torch.equal(out, w4a16_dequantize(t, group).to(dtype))
