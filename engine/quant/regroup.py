"""GPTQ's g_idx (desc_act): input features whose groups are scattered, made into contiguous groups.

The kernel reads groups of G consecutive input features. Sorting this rank's input features by group makes
them contiguous; the forward gathers x's columns in the same order (`perm`). A group with fewer than G of
this rank's features (tensor parallelism splits act-order groups across ranks) is padded to G with slots
whose weight reads x's appended zero column, so they add nothing. Checkpoints whose g_idx is the identity
order (desc_act false) keep perm None: no gather.
"""
from __future__ import annotations

import torch


def regroup(q: torch.Tensor, g_idx: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group: int):
    """q [N, K], g_idx [K] (local group ids), scales/zeros [N, NG] -> (q, scales, zeros, perm, padded)."""
    N, K = q.shape
    NG = scales.shape[1]
    g_idx = g_idx.long()
    if g_idx.numel() != K or int(g_idx.min()) < 0 or int(g_idx.max()) >= NG:
        raise ValueError(f"g_idx names groups outside 0..{NG - 1} (desc_act false with a reordering g_idx?)")
    if torch.equal(g_idx, torch.arange(K, device=g_idx.device) // group) and K == NG * group:
        return q, scales, zeros, None, False
    order = torch.argsort(g_idx, stable=True)
    counts = torch.bincount(g_idx, minlength=NG)
    padded = (counts + group - 1) // group * group
    starts = torch.cumsum(padded, 0) - padded
    firsts = torch.cumsum(counts, 0) - counts
    sorted_groups = g_idx[order]
    dest = starts[sorted_groups] + torch.arange(K, device=q.device) - firsts[sorted_groups]
    total = int(padded.sum())
    perm = torch.full((total,), K, dtype=torch.long, device=q.device)  # K: the zero column appended to x
    perm[dest] = order
    new_q = torch.zeros(N, total, dtype=q.dtype, device=q.device)
    new_q[:, dest] = q[:, order]
    slot_groups = torch.repeat_interleave(torch.arange(NG, device=q.device), padded // group)
    return new_q, scales[:, slot_groups], zeros[:, slot_groups], perm, total != K
