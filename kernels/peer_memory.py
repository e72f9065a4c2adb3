"""The protocol of ferry's peer-memory collectives (kernels/allreduce_rmsnorm.py, kernels/allgather.py).

Every rank owns a buffer that its peers write into over NVLink (symmetric memory: each rank holds every
rank's buffer address). A buffer is [2 slots][world source ranks][...], filled with a sentinel bit pattern
at the start: negative zero, which data never carries (a push sends -0.0 as +0.0). A program pushes its
block of data into the slot of every peer's buffer reserved for its rank, then waits in its own buffer until
no element of a peer's block is the sentinel, takes the block and puts the sentinel back. No barrier: a rank
can be at most one call ahead of a peer (it cannot finish call n+1 before every peer has pushed n+1), so two
slots used in turn (by a per-program counter kept on the device, the same on every rank since every rank
makes the same calls) keep a push from landing in a block a peer has not taken yet.
"""

import torch
import triton
import triton.language as tl


def sentinel_of(dtype: torch.dtype) -> int:
    return -(1 << (8 * dtype.itemsize - 1))


def buffer_dtype(dtype: torch.dtype) -> torch.dtype:
    """The integer type the buffers hold for a data dtype (the kernels compare bit patterns)."""
    return {2: torch.int16, 4: torch.int32}[dtype.itemsize]


@triton.jit
def to_wire(x, BITS: tl.constexpr):
    """x's bits as the buffers hold them: -0.0 (the sentinel) becomes +0.0."""
    int_ty = tl.int16 if BITS == 16 else tl.int32
    bits = x.to(int_ty, bitcast=True)
    return tl.where(bits == -(1 << (BITS - 1)), 0, bits).to(int_ty)


@triton.jit
def push(bufs_ptr, offset, bits, mask, rank, src_stride, WORLD: tl.constexpr, BITS: tl.constexpr):
    """Store `bits` at `offset` (slot and position) of this rank's part of every peer's buffer."""
    int_ty = tl.int16 if BITS == 16 else tl.int32
    for dst in tl.static_range(WORLD):
        if dst != rank:
            buf = tl.load(bufs_ptr + dst).to(tl.pointer_type(int_ty))
            tl.store(buf + rank * src_stride + offset, bits, mask=mask)


@triton.jit
def take(bufs_ptr, offset, mask, rank, src, src_stride, BITS: tl.constexpr, BLOCK: tl.constexpr):
    """Wait until peer `src`'s block at `offset` of this rank's buffer has arrived; return its bits and put the
    sentinel back (the slot is free for the call after next)."""
    int_ty = tl.int16 if BITS == 16 else tl.int32
    sentinel = -(1 << (BITS - 1))
    p = tl.load(bufs_ptr + rank).to(tl.pointer_type(int_ty)) + src * src_stride + offset
    v = tl.load(p, mask=mask, other=0, volatile=True)
    while tl.sum(((v == sentinel) & mask).to(tl.int32), axis=0) > 0:
        v = tl.load(p, mask=mask, other=0, volatile=True)
    tl.store(p, tl.full([BLOCK], sentinel, int_ty), mask=mask)
    return v
