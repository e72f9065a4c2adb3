"""The quantized-projection kernels compile for Hopper (sm_90) with Triton's own ptxas, no GPU needed: the
interpreter runs kernels the compiler rejects (a float global read in a kernel, for one), so the interpreter tests
alone do not show that the GPU path builds (nor does the interpreter run inline PTX at all: the packed W4A16 GEMV
and the wide FP8 GEMV are checked here). Also pins the arithmetic of the W4A16 GEMVs' main loops.

Runs benchmarks/compile_sm90.py in a subprocess: this test process has TRITON_INTERPRET=1 (tests/kernels/conftest.py),
under which Triton makes interpreted functions, which do not compile."""
import re

from tests.kernels.sm90_build import compile_sm90

NAMES = ["w4_gemv", "w4_gemv_2warps", "w4_gemv_packed", "fp8_gemv_wide", "w4_gemm_m16", "w4_gemm_m128", "fp8_gemv",
         "fp8_gemm_m4096", "fp8_quant",
         "fp8_silu_quant", "w4_dequant", "w4_split_k_sum"]


def test_kernels_compile_for_sm90():
    stdout = compile_sm90(NAMES, timeout=300)
    for name in NAMES:
        assert re.search(rf"^{name}: main loop \d+ instructions", stdout, re.M), stdout
    # LOP3 + FADD + FFMA per weight element are the floor (3); with 8 rows per thread (2 warps) the overhead around
    # them once made it 7.4, now 4.6.
    per = float(re.search(r"^w4_gemv_2warps: .* = ([\d.]+) per weight element", stdout, re.M).group(1))
    assert per < 5.5, stdout
    assert "LDG.E.EF.128" in stdout.split("w4_gemv:")[1].split("\n")[2]  # 16-byte weight loads
    # The packed variant (inline PTX, two elements per instruction): 19 per 8 elements at the core, 3.0 in all.
    per = float(re.search(r"^w4_gemv_packed: .* = ([\d.]+) per weight element", stdout, re.M).group(1))
    assert per < 3.3, stdout
    assert "LDG.E.EF.128" in stdout.split("w4_gemv_packed:")[1].split("\n")[2]
    # The W4A16 GEMM: tensor-core products (HGMMA) whose weight operand comes straight from the dequantizing
    # registers. A shared-memory store in its main loop means Triton routed the plane through shared memory again
    # (a loop-carried shift did that, 1.23-1.34x slower on an H200: kernels/w4a16_gemm.py).
    for name in ("w4_gemm_m16", "w4_gemm_m128"):
        ops = stdout.split(f"{name}:")[1].split("\n")[1]
        assert "HGMMA" in ops and not re.search(r"\bSTS \d", ops), stdout
