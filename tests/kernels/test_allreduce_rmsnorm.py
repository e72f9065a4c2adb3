"""The fused peer-memory all-reduce + residual + RMSNorm kernel, with ranks simulated in one process.

The interpreter runs one kernel at a time, so each call is split into its two halves: every rank
pushes, then every rank reduces (on GPUs one launch does both, with the ranks running at once).
"""
import pytest
import torch

from kernels.allreduce_rmsnorm import all_reduce_rms_norm, all_reduce_rms_norm_ref, peer_buffer_elements
from kernels.peer_memory import buffer_dtype, sentinel_of


class SimulatedGroup:
    def __init__(self, world: int, max_rows: int, hidden: int, dtype: torch.dtype):
        n = peer_buffer_elements(world, max_rows, hidden)
        self.buffers = [torch.full((n,), sentinel_of(dtype), dtype=buffer_dtype(dtype)) for _ in range(world)]
        self.ptrs = torch.tensor([b.data_ptr() for b in self.buffers], dtype=torch.int64)
        self.counters = [torch.zeros(max_rows, dtype=torch.int32) for _ in range(world)]
        self.world, self.max_rows, self.sentinel = world, max_rows, sentinel_of(dtype)

    def call(self, partials, residual, weight, eps):
        args = lambda r: (partials[r], residual, weight, eps, self.ptrs, self.counters[r], r, self.world, self.max_rows)
        for r in range(self.world):
            all_reduce_rms_norm(*args(r), push=True, reduce=False)
        return [all_reduce_rms_norm(*args(r), push=False, reduce=True) for r in range(self.world)]

    def all_clear(self) -> bool:
        return all(bool((b == self.sentinel).all()) for b in self.buffers)


def _exact_values(*shape):
    # Few mantissa bits: sums and the residual add are exact in bf16, so the interpreter's truncating
    # bf16 casts cannot differ from torch's rounding before the norm.
    return torch.randint(-16, 17, shape).float() / 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("world,with_residual", [(2, True), (4, True), (2, False)])
def test_every_rank_gets_the_same_fused_result(dtype, world, with_residual):
    torch.manual_seed(0)
    H, max_rows = 200, 4
    group = SimulatedGroup(world, max_rows, H, dtype)
    weight = (1 + 0.1 * torch.randn(H)).to(dtype)
    # Row counts vary from call to call (the per-row slot counters then differ between rows), and one
    # row carries negative zeros, the bit pattern the buffers use as "not arrived yet".
    for T in [3, 4, 1, 4, 2]:
        partials = [_exact_values(T, H).to(dtype) for _ in range(world)]
        partials[0][0, :7] = -0.0
        residual = _exact_values(T, H).to(dtype) if with_residual else None  # None: the first layer's
        outs = group.call(partials, residual, weight, 1e-5)
        ref_out, ref_res = all_reduce_rms_norm_ref(partials, residual, weight, 1e-5)
        for out, res in outs:
            assert torch.equal(out, outs[0][0]) and torch.equal(res, outs[0][1])  # bitwise, rank to rank
            assert torch.equal(res, ref_res)
            tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-2)
            torch.testing.assert_close(out, ref_out, **tol)
        assert group.all_clear()  # every slot read is reset for its next use
    assert [c.tolist() for c in group.counters] == [[5, 4, 3, 2]] * world


def test_a_push_fills_only_its_block_in_the_peer_buffer():
    """Rank 0's push lands in its block of slot 0 of rank 1's buffer, nowhere else (its own part stays in
    registers); a reduce on rank 1 waits for exactly that block to change."""
    group = SimulatedGroup(2, 2, 64, torch.bfloat16)
    x = [torch.ones(1, 64, dtype=torch.bfloat16) for _ in range(2)]
    all_reduce_rms_norm(x[0], x[0], torch.ones(64, dtype=torch.bfloat16), 1e-5, group.ptrs, group.counters[0], 0, 2,
                        2, push=True, reduce=False)
    # buffer layout [slot][source rank][max_rows 2][64]: slot 0, from rank 0, row 0 has arrived
    assert not bool((group.buffers[1][:64] == group.sentinel).any())
    assert bool((group.buffers[1][64:] == group.sentinel).all())
    assert bool((group.buffers[0] == group.sentinel).all())
