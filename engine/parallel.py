"""The tensor-parallel group: every rank runs the same step; collectives go through torch.distributed."""
from __future__ import annotations

import torch
import torch.distributed as dist

from shared.knobs import Knobs, read_knobs


def tp_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def tp_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """The sum over ranks; may return a new tensor (small ones go through peer memory, see PeerAllReduce)."""
    if tp_size() == 1:
        return x
    if _peer is not None and x.numel() * x.element_size() <= _peer.max_bytes and x.dtype == _peer.dtype:
        return _peer(x)
    dist.all_reduce(x)
    return x


class PeerAllReduce:
    """A one-shot all-reduce for small tensors (a decode step's hidden states) over peer memory: each rank
    copies its input into a buffer that every rank of the node can read over NVLink, then sums every
    rank's copy, in one kernel. NCCL needs ~18 us for a [1, 4096] bf16 tensor inside a CUDA graph; a
    decode step has two per layer. Built on torch's symmetric memory (point-to-point, no multicast).

    Two buffers in turn: each call starts with a barrier across ranks, so a rank is at most one call
    ahead of its peers and never overwrites a buffer that a peer is still reading."""

    def __init__(self, dtype: torch.dtype, device: torch.device, max_bytes: int):
        import warnings

        import torch.distributed._symmetric_memory as symm_mem

        group = dist.group.WORLD
        self.group_name = group.group_name
        if hasattr(symm_mem, "enable_symm_mem_for_group"):  # required before torch 2.9, deprecated since
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                symm_mem.enable_symm_mem_for_group(self.group_name)
        self.dtype, self.max_bytes = dtype, max_bytes
        self.buffers = []
        for _ in range(2):
            buf = symm_mem.empty(max_bytes // dtype.itemsize, dtype=dtype, device=device)
            symm_mem.rendezvous(buf, self.group_name)
            self.buffers.append(buf)
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        buf = self.buffers[self.calls % 2][:x.numel()]
        self.calls += 1
        out = torch.empty_like(x)
        torch.ops.symm_mem.one_shot_all_reduce_copy_out(buf, x.reshape(-1), "sum", self.group_name, out.view(-1))
        return out


class PeerAllReduceRMSNorm:
    """The all-reduce after a row-parallel layer fused with the residual add and RMSNorm that follow it, one
    kernel for up to `max_rows` rows (kernels/allreduce_rmsnorm.py): no barrier, no separate norm kernel.
    Each rank's buffer is symmetric memory its peers write into over NVLink."""

    def __init__(self, dtype: torch.dtype, device: torch.device, hidden: int, max_rows: int, group_name: str):
        from kernels.allreduce_rmsnorm import peer_buffer_elements

        self.dtype, self.hidden, self.max_rows = dtype, hidden, max_rows
        # the kernel reaches the buffer through raw addresses (ptrs): holding it keeps that memory mapped
        self.buffer, self.ptrs = _symmetric_sentinel_buffer(peer_buffer_elements(tp_size(), max_rows, hidden), dtype,
                                                           device, group_name)
        self.counters = torch.zeros(max_rows, dtype=torch.int32, device=device)

    def fits(self, x: torch.Tensor) -> bool:
        return x.dtype == self.dtype and x.shape[0] <= self.max_rows and x.shape[-1] == self.hidden

    def __call__(self, x, residual, weight, eps):
        from kernels.allreduce_rmsnorm import all_reduce_rms_norm

        if x.stride(-1) != 1:
            x = x.contiguous()
        if residual is not None and residual.stride(-1) != 1:
            residual = residual.contiguous()
        return all_reduce_rms_norm(x, residual, weight, eps, self.ptrs, self.counters, tp_rank(), tp_size(),
                                   self.max_rows)


class PeerAllGather:
    """All-gather along the last dimension for up to `max_numel` elements per rank (the vocabulary-parallel
    LM head's logits), one kernel over peer memory (kernels/allgather.py) instead of NCCL's."""

    def __init__(self, dtype: torch.dtype, device: torch.device, max_numel: int, group_name: str):
        from kernels.allgather import BLOCK, all_gather_buffer_elements

        self.dtype, self.max_numel = dtype, max_numel
        self.buffer, self.ptrs = _symmetric_sentinel_buffer(all_gather_buffer_elements(tp_size(), max_numel), dtype,
                                                           device, group_name)
        self.counters = torch.zeros(-(-max_numel // BLOCK), dtype=torch.int32, device=device)

    def fits(self, x: torch.Tensor) -> bool:
        return x.dtype == self.dtype and x.dim() == 2 and x.numel() <= self.max_numel

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from kernels.allgather import all_gather_last_dim_peer

        return all_gather_last_dim_peer(x.contiguous(), self.ptrs, self.counters, tp_rank(), tp_size(), self.max_numel)


def _symmetric_sentinel_buffer(numel: int, dtype: torch.dtype, device: torch.device, group_name: str):
    """A symmetric-memory buffer of the integer type matching `dtype`, filled with the sentinel on every rank
    before any rank goes on (a peer's first push must not land before the fill); and the device array of
    every rank's address of it."""
    import torch.distributed._symmetric_memory as symm_mem

    from kernels.peer_memory import buffer_dtype, sentinel_of

    buffer = symm_mem.empty(numel, dtype=buffer_dtype(dtype), device=device)
    handle = symm_mem.rendezvous(buffer, group_name)
    if handle.buffer_ptrs[tp_rank()] != buffer.data_ptr():
        raise RuntimeError("symmetric buffer does not start at its allocation")
    buffer.fill_(sentinel_of(dtype))
    ptrs = torch.tensor(handle.buffer_ptrs, dtype=torch.int64, device=device)
    done = torch.ones(1, device=device)
    dist.all_reduce(done)
    done.item()
    return buffer, ptrs


_peer: PeerAllReduce | None = None
_peer_norm: PeerAllReduceRMSNorm | None = None
_peer_gather: PeerAllGather | None = None


def fused_all_reduce_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """(rms_norm(sum over ranks of x + residual), that sum + residual) in one peer-memory kernel (no residual:
    (rms_norm(sum), sum)), or None where that kernel is off or x does not fit it (the caller then all-reduces
    and norms)."""
    if _peer_norm is None or not _peer_norm.fits(x):
        return None
    return _peer_norm(x, residual, weight, eps)


def enable_peer_all_reduce(dtype: torch.dtype, device: torch.device, hidden: int | None = None,
                           knobs: Knobs | None = None) -> bool:
    """Peer-memory collectives where every rank can use them (CUDA, torch's symmetric memory, peer access);
    otherwise NCCL does them all:
    - PeerAllReduce for small all-reduces the fused kernel does not take (it off, or a row-parallel layer
      that reduces its own output);
    - PeerAllReduceRMSNorm (for `hidden`-wide rows) after row-parallel layers;
    - PeerAllGather for the LM head's logits.
    knobs.peer_allreduce off turns all three off, knobs.fused_allreduce_norm and knobs.peer_allgather one each;
    knobs.peer_allreduce_max_bytes is the most any of them takes per rank (shared/knobs.py; None: read them from
    the environment now). Every rank calls this at the same point; each one is probed once and kept only if
    every rank got the right answer."""
    import logging

    global _peer, _peer_norm, _peer_gather
    _peer = _peer_norm = _peer_gather = None
    if tp_size() == 1 or device.type != "cuda":
        return False
    log = logging.getLogger(__name__)

    def every_rank(ok: bool) -> bool:  # all ranks take the same path, or their collectives would not pair up
        flag = torch.tensor([1 if ok else 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return int(flag.item()) == 1

    def attempt(name: str, wanted: bool, build, probe):
        """build() on every rank, then probe(it) -> bool on every rank; None unless all succeed."""
        if not every_rank(wanted):
            return None
        made = None
        try:
            made = build()
        except Exception as e:  # no symmetric memory here (driver, topology, torch build)
            log.warning("%s unavailable (%s: %s)", name, type(e).__name__, e)
        if not every_rank(made is not None):
            return None
        if not every_rank(bool(probe(made))):
            log.warning("%s gave a wrong answer; not using it", name)
            return None
        return made

    knobs = knobs or read_knobs()
    max_bytes = knobs.peer_allreduce_max_bytes
    ones = lambda n: torch.full((n,), float(tp_rank() + 1), dtype=dtype, device=device)  # noqa: E731
    want_sum = tp_size() * (tp_size() + 1) / 2
    _peer = attempt("peer-memory all-reduce", knobs.peer_allreduce, lambda: PeerAllReduce(dtype, device, max_bytes),
                    lambda p: (p(ones(8)) == want_sum).all().item())
    if _peer is None:
        log.info("all-reduces go through NCCL")
        return False
    log.info("small all-reduces (<= %d bytes) go through peer memory", _peer.max_bytes)
    group_name = _peer.group_name

    rows = min(256, max_bytes // (hidden * dtype.itemsize)) if hidden else 0

    def norm_probe(f):
        x = ones(hidden).view(1, hidden)
        _, total = f(x, torch.zeros_like(x), torch.ones(hidden, dtype=dtype, device=device), 1e-5)
        return (total == want_sum).all().item()
    _peer_norm = attempt("fused all-reduce + RMSNorm", rows > 0 and knobs.fused_allreduce_norm,
                         lambda: PeerAllReduceRMSNorm(dtype, device, hidden, rows, group_name), norm_probe)
    if _peer_norm is not None:
        log.info("all-reduces of up to %d rows fuse with the residual add and RMSNorm after them", rows)

    def gather_probe(g):
        out = g(ones(5).view(1, 5))
        want = torch.arange(1, tp_size() + 1, device=device).repeat_interleave(5).view(1, -1).to(dtype)
        return torch.equal(out, want)
    _peer_gather = attempt("peer-memory all-gather", knobs.peer_allgather,
                           lambda: PeerAllGather(dtype, device, max_bytes // dtype.itemsize, group_name), gather_probe)
    if _peer_gather is not None:
        log.info("all-gathers of up to %d elements per rank go through peer memory", _peer_gather.max_numel)
    return True


def all_gather_last_dim(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's shard along the last dimension (vocab-parallel logits)."""
    size = tp_size()
    if size == 1:
        return x
    if _peer_gather is not None and _peer_gather.fits(x):
        return _peer_gather(x)
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=-1)


def shard_range(total: int, rank: int, size: int) -> tuple[int, int]:
    """[start, end) of this rank's contiguous share of `total` items; shares differ by at most one."""
    return total * rank // size, total * (rank + 1) // size


def head_shard(num_heads: int, num_kv_heads: int, rank: int, size: int) -> tuple[int, int, int, int]:
    """This rank's query heads [q0, q1) and KV heads [k0, k1). Query heads stay with their KV head, so
    9 heads over 3 KV heads split 6 + 3 on two ranks; with fewer KV heads than ranks, each KV head is
    replicated on the ranks that share its query heads."""
    group = num_heads // num_kv_heads
    if num_kv_heads >= size:
        k0, k1 = shard_range(num_kv_heads, rank, size)
        return k0 * group, k1 * group, k0, k1
    if size % num_kv_heads or group % (size // num_kv_heads):
        raise ValueError(f"{num_heads} heads with {num_kv_heads} KV heads do not split over {size} ranks")
    replicas = size // num_kv_heads
    kv, part = divmod(rank, replicas)
    per = group // replicas
    q0 = kv * group + part * per
    return q0, q0 + per, kv, kv + 1


def init_tensor_parallel(world_size: int, rank: int, device: torch.device,
                         timeout_s: float = Knobs.dist_timeout_s) -> None:
    """Join the group (NCCL on GPUs, gloo on the CPU) at MASTER_ADDR:MASTER_PORT (127.0.0.1:29500 by default).

    Rank 0 hosts the rendezvous store. A rank restarted while an old rank 0 still runs would meet that
    rank's store and "join" a group that is gone; it refuses such a store (rank 0 marks its store once
    its group has formed) and exits so that its supervisor retries once the old rank 0 has gone too.
    Whatever else hangs here ends the process after timeout_s (the dist_timeout_s knob): a rank never waits
    forever to join.
    """
    if world_size <= 1 or dist.is_initialized():
        return
    import datetime
    import logging
    import os
    import threading

    addr = os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    port = int(os.environ.setdefault("MASTER_PORT", "29500"))
    # Bounded, but long enough for ranks that load real checkpoints at different speeds before their first
    # captured all-reduce (CUDA graphs). A dead peer is noticed sooner elsewhere: gloo fails at once on a
    # closed connection, and the runner service exits when the scheduler moves to a new session.
    timeout = datetime.timedelta(seconds=timeout_s)
    backend = "nccl" if device.type == "cuda" else "gloo"
    formed_key = "ferry/group_formed"

    def give_up():
        logging.getLogger(__name__).error("rank %d could not join its group in %.0fs; exiting", rank,
                                          timeout.total_seconds())
        logging.shutdown()
        os._exit(1)

    guard = threading.Timer(timeout.total_seconds() + 15, give_up)  # a store whose host died can hang
    guard.daemon = True
    guard.start()
    try:
        store = dist.TCPStore(addr, port, world_size, is_master=rank == 0, timeout=timeout)
        if rank and store.check([formed_key]):
            raise RuntimeError(f"the rendezvous store at {addr}:{port} belongs to a group formed earlier "
                               "(its rank 0 still runs); retry once that rank has exited")
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
        # Prove the group live while every rank is here, before weights load (no collective waits on those).
        probe = torch.ones(1, device=device)
        dist.all_reduce(probe)
        if int(probe.item()) != world_size:
            raise RuntimeError(f"tensor-parallel group check: {int(probe.item())} of {world_size} ranks answered")
        if rank == 0:
            store.set(formed_key, "1")
    finally:
        guard.cancel()

