"""Host data to the device without waiting for the GPU.

A copy from ordinary (pageable) host memory first waits for every kernel already queued on the
stream, so a runner preparing step N+1 while the GPU runs step N would stall until N ends. A copy
from pinned memory is queued behind those kernels instead and the host moves on; torch's pinned
allocator keeps the staging buffer alive until the copy has happened.
"""
from __future__ import annotations

import torch


def to_device(data, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A numpy array, list or CPU tensor as a tensor on `device` (queued, not waited for, on CUDA)."""
    t = torch.as_tensor(data, dtype=dtype)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
