"""All-gather along the last dimension over peer memory: the vocabulary-parallel LM head's logits.

The same scheme as kernels/allreduce_rmsnorm.py (sentinel-flagged data pushed into every peer's
buffer, two slots used in turn by a per-program counter, no barrier), here without the sum: each
program copies its chunk of this rank's shard into the output and into every peer's buffer, then
waits for the peers' chunks in its own buffer and copies them out.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _all_gather_kernel(
    x_ptr, out_ptr, bufs_ptr, counters_ptr, numel, cols, rank, slot_stride, src_stride,
    WORLD: tl.constexpr, BITS: tl.constexpr, BLOCK: tl.constexpr, PUSH: tl.constexpr, GATHER: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # into the flattened [rows, cols] shard
    mask = offs < numel
    if BITS == 16:
        int_ty = tl.int16
        sentinel = -32768
    else:
        int_ty = tl.int32
        sentinel = -2147483648
    count = tl.load(counters_ptr + pid)
    here = (count % 2).to(tl.int64) * slot_stride + offs
    # element (r, c) of rank s's shard goes to out[r, s * cols + c]
    out_row = (offs // cols) * (WORLD * cols) + offs % cols
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + out_row + rank * cols, x, mask=mask)
    if PUSH:
        bits = x.to(int_ty, bitcast=True)
        bits = tl.where(bits == sentinel, 0, bits).to(int_ty)  # -0.0 (the sentinel) travels as +0.0
        for dst in tl.static_range(WORLD):
            if dst != rank:
                buf = tl.load(bufs_ptr + dst).to(tl.pointer_type(int_ty))
                tl.store(buf + rank * src_stride + here, bits, mask=mask)
    if GATHER:
        mine = tl.load(bufs_ptr + rank).to(tl.pointer_type(int_ty))
        for src in tl.static_range(WORLD):
            if src != rank:
                p = mine + src * src_stride + here
                v = tl.load(p, mask=mask, other=0, volatile=True)
                while tl.sum(((v == sentinel) & mask).to(tl.int32), axis=0) > 0:
                    v = tl.load(p, mask=mask, other=0, volatile=True)
                tl.store(p, tl.full([BLOCK], sentinel, int_ty), mask=mask)
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
    )
    return out
