import pytest
import torch

from kernels.skinny_gemm import config_for, skinny_gemm


def _exact_operands(m, n, k, bias, dtype):
    torch.manual_seed(0)
    # Few mantissa bits: every partial sum is exact, so the kernel must equal the reference exactly.
    x = (torch.randint(-4, 5, (m, k)).float() / 4).to(dtype)
    w = (torch.randint(-4, 5, (n, k)).float() / 8).to(dtype)
    b = (torch.randint(-8, 9, (n,)).float() / 2).to(dtype) if bias else None
    return x, w, b


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,n,k,bias,split", [(2, 37, 100, False, 1), (5, 64, 256, True, 1),
                                              (17, 40, 200, True, 3), (32, 16, 64, False, 2)])
def test_skinny_gemm_matches_f_linear(dtype, m, n, k, bias, split):
    x, w, b = _exact_operands(m, n, k, bias, dtype)
    # Small blocks: partial output tiles, a partial last K block, and K split (partial sums added by the
    # second kernel) where split > 1.
    out = skinny_gemm(x, w, b, block_n=16, block_k=32, split_k=split, num_warps=1, num_stages=1)
    assert out.shape == (m, n) and out.dtype == dtype
    ref = torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float())
    if dtype == torch.float16:  # the sums are exact and fit fp16's mantissa
        assert torch.equal(out.float(), ref)
    else:  # the interpreter rounds to bf16 by truncation: one bf16 ulp
        torch.testing.assert_close(out.float(), ref, rtol=2 ** -7, atol=0)


def test_skinny_gemm_strided_rows():
    x, w, _ = _exact_operands(4, 32, 64, False, torch.bfloat16)
    wide = torch.zeros(4, 96, dtype=torch.bfloat16)
    wide[:, 16:80] = x
    out = skinny_gemm(wide[:, 16:80], w, block_n=16, block_k=32, num_warps=1, num_stages=1)
    assert torch.equal(out.float(), (x.float() @ w.float().t()).to(torch.bfloat16).float())


def test_config_splits_k_only_for_few_tiles():
    assert config_for(28672, 4096)["split_k"] == 1  # 224 tiles of 128: every SM has work
    assert config_for(6144, 4096)["split_k"] == 1  # 96 tiles of 64
    few = config_for(4096, 14336)  # 64 tiles
    assert few["split_k"] == 2 and 14336 % (few["split_k"] * few["block_k"]) == 0


@pytest.mark.parametrize("m,split,bias", [(1, 1, False), (3, 2, True), (20, 1, True)])
def test_skinny_gemm_fp8_weight_is_w8a16(m, split, bias):
    # An e4m3 weight of exactly representable values and a per-row scale: the kernel must give x @ (w * s)^T.
    torch.manual_seed(0)
    n, k = 40, 192
    x = (torch.randint(-4, 5, (m, k)).float() / 4).to(torch.bfloat16)
    w = (torch.randint(-8, 9, (n, k)).float() / 8).to(torch.float8_e4m3fn)
    ws = torch.rand(n) * 0.01 + 0.001
    b = (torch.randint(-8, 9, (n,)).float() / 2).to(torch.bfloat16) if bias else None
    out = skinny_gemm(x, w, b, weight_scale=ws, block_n=16, block_k=64, split_k=split, num_warps=1, num_stages=1)
    ref = x.float() @ (w.float() * ws[:, None]).t() + (0 if b is None else b.float())
    assert out.shape == (m, n) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=2 ** -7, atol=1e-6)


@pytest.mark.parametrize("m,split", [(1, 1), (6, 2)])
def test_skinny_gemm_w8a8_matches_fp8_linear_reference(m, split):
    # x quantized per token (the torch reference's bits), the weight e4m3 per row: the kernel's sums of e4m3
    # products are exact in fp32, so it meets fp8_linear_ref up to bf16 rounding.
    from kernels.fp8_linear import fp8_linear_ref, quantize_fp8_per_channel, quantize_fp8_per_token_ref

    torch.manual_seed(0)
    n, k = 24, 256
    x = torch.randn(m, k).to(torch.bfloat16)
    w, ws = quantize_fp8_per_channel(torch.randn(n, k) * 0.02)
    xq, xs = quantize_fp8_per_token_ref(x)
    out = skinny_gemm(xq, w, weight_scale=ws, x_scale=xs.contiguous(), out_dtype=torch.bfloat16, block_n=16,
                      block_k=64, split_k=split, num_warps=1, num_stages=1)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), fp8_linear_ref(x, w, ws).float(), rtol=2 ** -7, atol=1e-5)
