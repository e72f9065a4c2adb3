"""RMSNorm with an optional fused residual add; the Triton kernel on CUDA, plain torch elsewhere."""
from __future__ import annotations

import torch
from torch import nn

from engine.layers.backend import building_on_cuda
from engine.parallel import all_reduce, fused_all_reduce_rms_norm, tp_size


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Same numerics as transformers: normalize in fp32, cast back, then scale.
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rms_norm_residual_torch(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """kernels.rms_norm's contract in plain torch: norm(x), or (norm(x + residual), x + residual)."""
    if residual is None:
        return rms_norm_torch(x, weight, eps)
    x = x + residual
    return rms_norm_torch(x, weight, eps), x


def select_rms_norm():
    """The norm function a layer built now calls (engine.layers.backend)."""
    if building_on_cuda():
        from kernels import rms_norm

        return rms_norm
    return rms_norm_residual_torch


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden), requires_grad=False)
        self.norm = select_rms_norm()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, reduce: bool = False):
        """norm(x), or with a residual (norm(x + residual), x + residual).

        reduce: x is this rank's partial sum (a row-parallel layer's or the vocabulary-parallel embedding's
        output): it is summed over the group first, with the residual add in the same peer-memory kernel where
        that is on (engine.parallel), and the sum comes back too: (norm(sum + residual), sum + residual)."""
        if reduce:
            if tp_size() > 1:
                fused = fused_all_reduce_rms_norm(x, residual, self.weight, self.eps)
                if fused is not None:
                    return fused
                x = all_reduce(x)
            if residual is None:
                return self.norm(x, self.weight, self.eps), x
        return self.norm(x, self.weight, self.eps, residual)
