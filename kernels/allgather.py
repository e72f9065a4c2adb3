"""All-gather along the last dimension over peer memory: the vocabulary-parallel LM head's logits.

The protocol of kernels/peer_memory.py, as in kernels/allreduce_rmsnorm.py, here without the sum: each
program copies its chunk of this rank's shard into the output and into every peer's buffer, then
waits for the peers' chunks in its own buffer and copies them out.
"""

import torch
import triton
import triton.language as tl

from kernels.pdl import launch_options, pdl_start
from kernels.peer_memory import push, take, to_wire


@triton.jit
def _all_gather_kernel(
    x_ptr, out_ptr, bufs_ptr, counters_ptr, numel, cols, rank, slot_stride, src_stride,
    WORLD: tl.constexpr, BITS: tl.constexpr, BLOCK: tl.constexpr, PUSH: tl.constexpr, GATHER: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_start(USE_PDL)
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # into the flattened [rows, cols] shard
    mask = offs < numel
    count = tl.load(counters_ptr + pid)
    here = (count % 2).to(tl.int64) * slot_stride + offs
    # element (r, c) of rank s's shard goes to out[r, s * cols + c]
    out_row = (offs // cols) * (WORLD * cols) + offs % cols
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + out_row + rank * cols, x, mask=mask)
    if PUSH:
        push(bufs_ptr, here, to_wire(x, BITS), mask, rank, src_stride, WORLD, BITS)
    if GATHER:
        for src in tl.static_range(WORLD):
            if src != rank:
                v = take(bufs_ptr, here, mask, rank, src, src_stride, BITS, BLOCK)
                tl.store(out_ptr + out_row + src * cols, v.to(out_ptr.dtype.element_ty, bitcast=True), mask=mask)
        tl.store(counters_ptr + pid, count + 1)


BLOCK = 2048


def all_gather_buffer_elements(world: int, max_numel: int) -> int:
    """Elements of each rank's buffer: [2 slots][world source ranks][max_numel]."""
    return 2 * world * max_numel


def all_gather_last_dim_peer(x: torch.Tensor, buffer_ptrs: torch.Tensor, counters: torch.Tensor, rank: int,
                             world: int, max_numel: int, push: bool = True, gather: bool = True) -> torch.Tensor:
    """x [rows, cols] (contiguous, rows * cols <= max_numel): every rank's shard side by side, [rows, world * cols].
    counters: int32, at least ceil(max_numel / BLOCK), zeros at the start."""
    rows, cols = x.shape
    assert x.is_contiguous() and x.numel() <= max_numel and x.dtype.itemsize in (2, 4)
    out = torch.empty((rows, world * cols), dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return out
    _all_gather_kernel[(triton.cdiv(x.numel(), BLOCK),)](
        x, out, buffer_ptrs, counters, x.numel(), cols, rank, world * max_numel, max_numel,
        WORLD=world, BITS=8 * x.dtype.itemsize, BLOCK=BLOCK, PUSH=push, GATHER=gather, num_warps=4,
        **launch_options(x),
    )
    return out
