"""All-reduce over peer memory fused with the residual add and RMSNorm that follow it.

A row-parallel projection leaves each rank with a partial sum; the next thing the model does is
`rms_norm(sum + residual)`. Here one kernel does all three for small batches (a decode step), in
place of an all-reduce kernel, a barrier and a norm kernel.

Ranks meet without a barrier (the "Lamport" trick, kernels/peer_memory.py): each program pushes its
row of the partial sum into every peer's buffer over NVLink, waits in its own buffer for the peers'
rows, and sums all ranks' parts in rank order, its own from registers, so every rank gets the same
bits. Row r's slot is the parity of a per-row counter on the device, so the kernel replays in CUDA
graphs.

PUSH and REDUCE split the kernel's two halves for the CPU tests (the interpreter runs one rank
at a time); on GPUs both run in one launch.
"""

import torch
import triton
import triton.language as tl

from kernels.pdl import launch_options, pdl_start
from kernels.peer_memory import push, take, to_wire
from kernels.rmsnorm import residual_rms_norm_row


@triton.jit
def _all_reduce_rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, bufs_ptr, counters_ptr,
    stride_x, stride_r, stride_o, stride_ro, H, eps, rank, slot_stride, src_stride,
    WORLD: tl.constexpr, BITS: tl.constexpr, BLOCK: tl.constexpr, PUSH: tl.constexpr, REDUCE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, USE_PDL: tl.constexpr,
):
    pdl_start(USE_PDL)  # the next projection starts reading its weight while this waits for the peers
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < H
    count = tl.load(counters_ptr + row)
    # This row of the current slot, in the block of every rank's buffer that rank `src` writes.
    here = (count % 2).to(tl.int64) * slot_stride + row * H + offs

    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    bits = to_wire(x, BITS)
    if PUSH:
        push(bufs_ptr, here, bits, mask, rank, src_stride, WORLD, BITS)

    if REDUCE:
        acc = tl.zeros([BLOCK], tl.float32)
        # In rank order, this rank's own part from registers (the same bits its peers receive), so every
        # rank adds the same numbers in the same order.
        for src in tl.static_range(WORLD):
            if src == rank:
                v = bits
            else:
                v = take(bufs_ptr, here, mask, rank, src, src_stride, BITS, BLOCK)
            acc += v.to(x_ptr.dtype.element_ty, bitcast=True).to(tl.float32)
        tl.store(counters_ptr + row, count + 1)

        # From here on, exactly the unfused path: round the sum to the model dtype (as NCCL's would be),
        # then the residual add and RMSNorm of kernels/rmsnorm.py (the sum is returned without a residual too).
        h = acc.to(res_out_ptr.dtype.element_ty).to(tl.float32)
        residual_rms_norm_row(h, res_ptr + row * stride_r, res_out_ptr + row * stride_ro, w_ptr,
                              out_ptr + row * stride_o, offs, mask, H, eps, HAS_RESIDUAL, True)


def peer_buffer_elements(world: int, max_rows: int, hidden: int) -> int:
    """Elements of each rank's buffer: [2 slots][world source ranks][max_rows][hidden]."""
    return 2 * world * max_rows * hidden


def all_reduce_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                        buffer_ptrs: torch.Tensor, counters: torch.Tensor, rank: int, world: int, max_rows: int,
                        push: bool = True, reduce: bool = True):
    """x [T, H]: this rank's partial sum. Returns (rms_norm(sum + residual), sum + residual), like
    kernels.rms_norm with a residual; without one, (rms_norm(sum), sum). buffer_ptrs: int64 [world] addresses
    of every rank's buffer of peer_buffer_elements(world, max_rows, H) elements, filled with the sentinel;
    counters: int32 [>= max_rows], zeros at the start, this rank's own."""
    T, H = x.shape
    assert T <= max_rows and x.dtype.itemsize in (2, 4) and x.stride(1) == 1
    assert residual is None or residual.stride(1) == 1
    out = torch.empty((T, H), dtype=x.dtype, device=x.device)
    res_out = torch.empty((T, H), dtype=x.dtype, device=x.device)
    if T == 0:
        return out, res_out
    BLOCK = triton.next_power_of_2(H)
    _all_reduce_rms_norm_kernel[(T,)](
        x, residual if residual is not None else x, weight, out, res_out, buffer_ptrs, counters,
        x.stride(0), residual.stride(0) if residual is not None else 0, out.stride(0), res_out.stride(0), H, eps,
        rank, world * max_rows * H, max_rows * H,
        WORLD=world, BITS=8 * x.dtype.itemsize, BLOCK=BLOCK, PUSH=push, REDUCE=reduce,
        HAS_RESIDUAL=residual is not None,
        num_warps=min(16, max(1, BLOCK // 512)), **launch_options(x),
    )
    return out, res_out


def all_reduce_rms_norm_ref(partials: list[torch.Tensor], residual: torch.Tensor | None, weight: torch.Tensor,
                            eps: float):
    from kernels.rmsnorm import rms_norm_ref

    total = torch.stack([p.float() for p in partials]).sum(0).to(partials[0].dtype)
    if residual is None:
        return rms_norm_ref(total, weight, eps), total
    return rms_norm_ref(total, weight, eps, residual)
