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
