import pytest
import torch

from kernels import gemv, gemv_ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,k,bias", [(37, 100, False), (64, 256, True), (5, 2048, False)])
def test_gemv_matches_reference(dtype, n, k, bias):
    torch.manual_seed(0)
    # Values with few mantissa bits: the fp32 sums are exact (fp32 must match exactly); bf16 outputs may
    # differ by the final rounding (the interpreter truncates).
    x = (torch.randint(-4, 5, (1, k)).float() / 4).to(dtype)
    w = (torch.randint(-4, 5, (n, k)).float() / 8).to(dtype)
    b = (torch.randint(-8, 9, (n,)).float() / 2).to(dtype) if bias else None
    # Small blocks so that rows and K both end in partial blocks.
    out = gemv(x, w, b, block_n=4, block_k=64, num_warps=1, num_stages=1)
    assert out.shape == (1, n) and out.dtype == dtype
    if dtype == torch.float32:
        assert torch.equal(out, gemv_ref(x, w, b))
    else:
        torch.testing.assert_close(out, gemv_ref(x, w, b), rtol=1.6e-2, atol=1e-2)
