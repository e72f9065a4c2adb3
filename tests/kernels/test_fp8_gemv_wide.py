"""The second FP8 W8A16 GEMV (kernels/fp8_gemv_wide.py, fp8_gemv(variant="wide")) in the interpreter against the
torch reference: partial row blocks and word blocks, several rows of x, bias, and bf16's one-load activations."""
import pytest
import torch

from kernels.fp8_gemv import fp8_gemv, fp8_gemv_ref
from kernels.fp8_linear import quantize_fp8_per_channel


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k,m,bias", [(37, 300, 1, True), (10, 512, 3, False), (5, 64, 2, True)])
def test_wide_gemv_matches_reference(dtype, n, k, m, bias):
    g = torch.Generator().manual_seed(n + k)
    w, ws = quantize_fp8_per_channel(torch.randn(n, k, generator=g))
    x = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    out = fp8_gemv(x, w, ws, b, variant="wide", block_n=4, block_w=32, num_warps=1, num_stages=1)
    ref = fp8_gemv_ref(x, w, ws, b)
    assert out.dtype == dtype and out.shape == (m, n)
    tol = 1e-4 if dtype == torch.float32 else 1e-2  # fp32: only the order of the sums differs
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)
