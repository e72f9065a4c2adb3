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


def rms_norm_fp8_torch(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """kernels.rmsnorm.rms_norm_fp8's contract in plain torch: the norm's output quantized per token."""
    from kernels.fp8_linear import Fp8Activation, quantize_fp8_per_token_ref

    out = rms_norm_residual_torch(x, weight, eps, residual)
    h = out if residual is None else out[0]
    act = Fp8Activation(*quantize_fp8_per_token_ref(h), h.dtype)
    return act if residual is None else (act, out[1])


def select_rms_norm(fp8_out: bool = False):
    """The norm function a layer built now calls (engine.layers.backend); fp8_out: the one whose output is
    quantized per token."""
    if building_on_cuda():
        from kernels.rmsnorm import rms_norm, rms_norm_fp8

        return rms_norm_fp8 if fp8_out else rms_norm
    return rms_norm_fp8_torch if fp8_out else rms_norm_residual_torch


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float, fp8_out: bool = False):
        """fp8_out: the output feeds an FP8 projection with per-token activation scales: where that projection
        would quantize its input (kernels.fp8_linear.takes_fp8_input), the norm hands it an Fp8Activation,
        quantized in the norm's own kernel. (Not after a fused all-reduce, nor for rows too wide for that kernel:
        the projection quantizes then.) Kernels are imported only then: a 16-bit model on the CPU needs no triton."""
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden), requires_grad=False)
        self.norm = select_rms_norm()
        self.norm_fp8 = self.takes_fp8_input = None
        if fp8_out:
            from kernels.fp8_linear import takes_fp8_input
            from kernels.rmsnorm import FP8_MAX_H

            if hidden <= FP8_MAX_H:
                self.norm_fp8, self.takes_fp8_input = select_rms_norm(fp8_out=True), takes_fp8_input

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
                return self._norm(x, None), x
        return self._norm(x, residual)

    def _norm(self, x: torch.Tensor, residual: torch.Tensor | None):
        if self.norm_fp8 is not None and self.takes_fp8_input(x.shape[0], x.is_cuda):
            return self.norm_fp8(x, self.weight, self.eps, residual)
        if residual is None:
            return self.norm(x, self.weight, self.eps)
        return self.norm(x, self.weight, self.eps, residual)
