"""The prefill-attention variants compile for Hopper (sm_90) with Triton's own ptxas, no GPU needed (the
interpreter runs kernels the compiler may reject), their dots become wgmma (HGMMA), and the packed kernel's loop
is shorter than the base kernel's. Between them these builds take every constexpr branch of
kernels/prefill_packed.py both ways (benchmarks/prefill_variants.py: "packed" has every switch on, "packed_plain"
every one off, "packed_own_tma" the new tokens' K/V from the step's own k / v by TMA). The opt-in variants were also
built and run on an H200 by benchmarks/prefill_sweep.py (docs/perf.md); the block_n 128, fp8-cache and own-K/V-by-
pointer builds are left to that sweep to keep the suite short. Runs benchmarks/compile_sm90.py in a subprocess, as
tests/kernels/test_sm90_compile.py does (this process has TRITON_INTERPRET=1)."""
import re

from tests.kernels.sm90_build import compile_sm90

NAMES = ["prefill_base", "prefill_packed", "prefill_packed_plain", "prefill_packed_own_tma"]


def test_prefill_variants_compile_for_sm90():
    stdout = compile_sm90(NAMES, timeout=400)
    loops = {}
    for name in NAMES:
        m = re.search(rf"^{name}: main loop (\d+) instructions.*\n(.*)", stdout, re.M)
        assert m, stdout
        assert "HGMMA" in m.group(2), stdout
        loops[name] = int(m.group(1))
    assert loops["prefill_packed"] < loops["prefill_base"], loops
