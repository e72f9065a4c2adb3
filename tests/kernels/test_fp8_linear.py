"""FP8 kernels (Triton interpreter) against the torch references: per-token quantization (dynamic and static,
one pass and two), the W8A16 GEMV and the W8A8 GEMM; partial blocks in M, N and K."""
import pytest
import torch

from kernels.fp8_gemm import fp8_gemm
from kernels.fp8_gemv import fp8_gemv, fp8_gemv_ref
from kernels.fp8_linear import (
    FP8_DTYPE,
    FP8_MAX,
    fp8_linear,
    fp8_linear_ref,
    quantize_fp8_per_channel,
    quantize_fp8_per_token,
    quantize_fp8_per_token_ref,
)
from kernels.fp8_quant import quantize_fp8_rows


def _representable_rows(m, k, dtype, seed=0):
    """Rows of e4m3 values times a power of two, each holding +-448 * 2^e: x / scale is exact, so the kernel and
    the reference agree bit for bit without depending on the rounding of the conversion (the interpreter's fp8
    conversion drops the carry when a value rounds up to the next power of two; the GPU's does not)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 256, (m, k), generator=g, dtype=torch.int32).to(torch.uint8)
    vals = codes.view(FP8_DTYPE).float()
    vals = torch.where(vals.isnan(), torch.zeros_like(vals), vals)
    vals[:, k // 3] = FP8_MAX * torch.where(torch.rand(m, generator=g) < 0.5, -1.0, 1.0)
    exps = 2.0 ** torch.randint(-8, 0, (m, 1), generator=g).float()
    return (vals * exps).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k,block_k", [(3, 100, None), (2, 300, 64), (5, 64, None)])
def test_quantize_per_token_matches_reference(dtype, m, k, block_k):
    x = _representable_rows(m, k, dtype)
    q, s = quantize_fp8_rows(x, None, block_k=block_k)
    qr, sr = quantize_fp8_per_token_ref(x)
    assert q.dtype == FP8_DTYPE and s.shape == (m, 1) and s.dtype == torch.float32 and s.is_contiguous()
    assert torch.equal(s, sr) and torch.equal(q.view(torch.uint8), qr.view(torch.uint8))


@pytest.mark.parametrize("block_k", [None, 64])
def test_quantize_static_scale_and_clamp(block_k):
    x = _representable_rows(4, 200, torch.float32) * 4  # a static scale of 1/16 clamps the largest values
    scale = torch.tensor([2.0 ** -4])
    q, s = quantize_fp8_rows(x, scale, block_k=block_k)
    qr, sr = quantize_fp8_per_token_ref(x, scale)
    assert torch.equal(s, sr.contiguous()) and torch.equal(q.view(torch.uint8), qr.view(torch.uint8))
    assert q.float().abs().max() == FP8_MAX


def test_quantize_zero_row_has_the_floor_scale():
    q, s = quantize_fp8_rows(torch.zeros(2, 32))
    assert torch.equal(s, torch.full((2, 1), 1e-12)) and not q.float().any()


def _fp8_weight(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return quantize_fp8_per_channel(torch.randn(n, k, generator=g))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k,m,bias,prefetch", [(37, 300, 1, True, False), (10, 512, 3, False, True),
                                                  (5, 64, 2, True, False), (37, 300, 1, False, True)])
def test_gemv_w8a16_matches_reference(dtype, n, k, m, bias, prefetch):
    w, ws = _fp8_weight(n, k)
    x = torch.randn(m, k).to(dtype)
    b = torch.randn(n).to(dtype) if bias else None
    out = fp8_gemv(x, w, ws, b, block_n=4, block_k=128, num_warps=1, num_stages=1, prefetch=prefetch)
    ref = fp8_gemv_ref(x, w, ws, b)
    assert out.dtype == dtype and out.shape == (m, n)
    tol = 1e-4 if dtype == torch.float32 else 1e-2  # fp32: only the order of the sums differs
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k,m,bias", [(37, 300, 5, True), (40, 256, 20, False), (16, 96, 33, True)])
def test_gemm_w8a8_matches_reference(dtype, n, k, m, bias):
    w, ws = _fp8_weight(n, k)
    x = _representable_rows(m, k, dtype, seed=2)
    b = torch.randn(n).to(dtype) if bias else None
    xq, xs = quantize_fp8_per_token_ref(x)
    out = fp8_gemm(xq, w, xs.contiguous(), ws, b, dtype, block_m=16, block_n=16, block_k=32, num_warps=1)
    ref = fp8_linear_ref(x, w, ws, None, b)
    assert out.dtype == dtype and out.shape == (m, n)
    tol = 1e-4 if dtype == torch.float32 else 1e-2  # fp32: only the order of the sums differs
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)


def test_w8a16_is_closer_to_the_dense_product_than_w8a8():
    # The reason the batch-1 GEMV does not quantize x: against the unquantized weight's product.
    torch.manual_seed(0)
    dense = torch.randn(64, 1024)
    w, ws = quantize_fp8_per_channel(dense)
    x = torch.randn(1, 1024)
    exact = x @ (w.float() * ws[:, None]).t()
    err16 = (fp8_gemv(x, w, ws, block_n=4, block_k=256, num_warps=1) - exact).norm()
    err8 = (fp8_linear_ref(x, w, ws) - exact).norm()
    assert err16 < err8 / 4


def test_linear_and_quantize_on_cpu_are_the_references():
    w, ws = _fp8_weight(8, 64)
    x = torch.randn(3, 64)
    assert torch.equal(fp8_linear(x, w, ws), fp8_linear_ref(x, w, ws))
    q, s = quantize_fp8_per_token(x)
    qr, sr = quantize_fp8_per_token_ref(x)
    assert torch.equal(s, sr) and torch.equal(q.view(torch.uint8), qr.view(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_and_mul_quant_equals_the_two_kernels(dtype):
    from kernels import silu_and_mul
    from kernels.fp8_silu_quant import silu_and_mul_quant_fp8
    x = (torch.randn(5, 2 * 200) * 3).to(dtype)
    q, s = silu_and_mul_quant_fp8(x)
    q2, s2 = quantize_fp8_rows(silu_and_mul(x))
    assert torch.equal(s, s2) and torch.equal(q.view(torch.uint8), q2.view(torch.uint8))


def test_linear_on_prequantized_input_matches_reference():
    from kernels.fp8_linear import fp8_linear_quantized
    w, ws = _fp8_weight(24, 96)
    x = _representable_rows(6, 96, torch.float32)
    xq, xs = quantize_fp8_per_token_ref(x)
    b = torch.randn(24)
    out = fp8_linear_quantized(xq, xs, w, ws, b, torch.float32)
    torch.testing.assert_close(out, fp8_linear_ref(x, w, ws, None, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("h", [64, 200])
def test_rms_norm_fp8_equals_the_two_kernels(dtype, residual, h):
    """The fused norm's e4m3 rows and scales are quantize_fp8_rows(rms_norm(x)) bit for bit, and its residual sum
    is rms_norm's (h = 200: a masked tail in the row)."""
    from kernels.rmsnorm import rms_norm, rms_norm_fp8
    x = (torch.randn(5, h) * 3).to(dtype)
    w = (torch.rand(h) + 0.5).to(dtype)
    r = torch.randn(5, h).to(dtype) if residual else None
    fused = rms_norm_fp8(x, w, 1e-5, r)
    plain = rms_norm(x, w, 1e-5, r)
    act, out = (fused[0], plain[0]) if residual else (fused, plain)
    q2, s2 = quantize_fp8_rows(out)
    assert act.dtype == dtype
    assert torch.equal(act.scale, s2) and torch.equal(act.q.view(torch.uint8), q2.view(torch.uint8))
    if residual:
        assert torch.equal(fused[1], plain[1])


def test_linear_on_an_fp8_activation_is_the_reference_on_x():
    from kernels.fp8_linear import Fp8Activation
    w, ws = _fp8_weight(24, 96)
    x = torch.randn(6, 96)
    b = torch.randn(24)
    act = Fp8Activation(*quantize_fp8_per_token_ref(x), x.dtype)
    assert torch.equal(fp8_linear(act, w, ws, None, b), fp8_linear_ref(x, w, ws, None, b))
