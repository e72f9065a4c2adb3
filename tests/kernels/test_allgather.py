"""The peer-memory all-gather (kernels/allgather.py), ranks simulated in one process: every rank pushes,
then every rank gathers (on GPUs one launch does both)."""
import pytest
import torch

from kernels.allgather import BLOCK, all_gather_buffer_elements, all_gather_last_dim_peer
from kernels.peer_memory import buffer_dtype, sentinel_of


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_gets_every_shard(dtype, world):
    torch.manual_seed(0)
    max_numel = 3 * BLOCK
    n = all_gather_buffer_elements(world, max_numel)
    buffers = [torch.full((n,), sentinel_of(dtype), dtype=buffer_dtype(dtype)) for _ in range(world)]
    ptrs = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.int64)
    counters = [torch.zeros(3, dtype=torch.int32) for _ in range(world)]
    for rows, cols in [(1, 3000), (2, 1500), (1, 10), (3, 2048)]:  # chunks and rows that do not line up
        shards = [torch.randn(rows, cols).to(dtype) for _ in range(world)]
        shards[0][0, :4] = -0.0  # the sentinel's bit pattern, sent as +0.0
        for r in range(world):
            all_gather_last_dim_peer(shards[r], ptrs, counters[r], r, world, max_numel, push=True, gather=False)
        outs = [all_gather_last_dim_peer(shards[r], ptrs, counters[r], r, world, max_numel, push=False, gather=True)
                for r in range(world)]
        want = torch.cat(shards, dim=-1)
        for out in outs:
            assert out.shape == (rows, world * cols) and torch.equal(out, want)
        assert all(bool((b == sentinel_of(dtype)).all()) for b in buffers)
