"""The tensor-parallel group: every rank runs the same step; collectives go through torch.distributed."""
from __future__ import annotations

import torch
import torch.distributed as dist


def tp_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def tp_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    if tp_size() > 1:
        dist.all_reduce(x)
    return x


def all_gather_last_dim(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's shard along the last dimension (vocab-parallel logits)."""
    size = tp_size()
    if size == 1:
        return x
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


def init_tensor_parallel(world_size: int, rank: int, device: torch.device) -> None:
    """Join the group (NCCL on GPUs, gloo on the CPU) at MASTER_ADDR:MASTER_PORT (127.0.0.1:29500 by default)."""
    if world_size <= 1 or dist.is_initialized():
        return
    import datetime
    import os

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    backend = "nccl" if device.type == "cuda" else "gloo"
    # A bounded timeout: a rank whose peer died fails its collective instead of waiting forever.
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=int(os.environ.get("FERRY_DIST_TIMEOUT", "60"))))
