"""The order in which a GEMM's programs take output tiles: GROUP_M tile rows at a time, down the rows first, so that
programs running together share the same few weight (B) tiles in L2 (the grouped order of Triton's matmul
tutorial). kernels/fp8_gemm.py and kernels/w4a16_gemm.py use it, and config_by_rows to pick their tile sizes."""
import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(tile row, tile column) of program pid."""
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    rows_here = tl.minimum(tiles_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % rows_here, (pid % per_group) // rows_here


def config_by_rows(configs: list, M: int) -> dict:
    """configs: [(the most rows it is for, or None for any), config] in order: a copy of the first that takes M."""
    for bound, cfg in configs:
        if bound is None or M <= bound:
            return dict(cfg)
    raise AssertionError("the last config must take any M (bound None)")
