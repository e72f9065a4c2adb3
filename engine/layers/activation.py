"""silu(gate) * up: the Triton kernel on CUDA, plain torch elsewhere (chosen when the layer is built); for an FP8
down projection with per-token activation scales, the product quantized in the same kernel."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.layers.backend import building_on_cuda


def silu_and_mul_torch(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_and_mul_fp8_torch(x: torch.Tensor):
    """kernels.fp8_silu_quant's contract in plain torch, as a kernels.fp8_linear.Fp8Activation."""
    from kernels.fp8_linear import Fp8Activation, quantize_fp8_per_token_ref

    y = silu_and_mul_torch(x)
    return Fp8Activation(*quantize_fp8_per_token_ref(y), y.dtype)


class SiluAndMul(nn.Module):
    """silu(gate) * up for a merged [gate | up] projection. fp8_out: the down projection after it, of `width` input
    features, is FP8 with per-token activation scales; where it would quantize its input
    (kernels.fp8_linear.takes_fp8_input) this hands it a kernels.fp8_linear.Fp8Activation instead
    (kernels/fp8_silu_quant.py: the 16-bit product never reaches memory), for widths that kernel holds in
    registers. Kernels are imported only for that: a 16-bit model on the CPU needs no triton."""

    def __init__(self, fp8_out: bool = False, width: int = 0):
        super().__init__()
        self.fn_fp8 = self.takes_fp8_input = None
        if building_on_cuda():
            from kernels import silu_and_mul

            self.fn = silu_and_mul
        else:
            self.fn = silu_and_mul_torch
        if fp8_out:
            from kernels.fp8_linear import Fp8Activation, takes_fp8_input
            from kernels.fp8_silu_quant import MAX_I, silu_and_mul_quant_fp8

            if width <= MAX_I:
                self.takes_fp8_input = takes_fp8_input
                self.fn_fp8 = ((lambda x: Fp8Activation(*silu_and_mul_quant_fp8(x), x.dtype)) if building_on_cuda()
                               else silu_and_mul_fp8_torch)

    def forward(self, x: torch.Tensor):
        """silu(gate) * up, or the same as an Fp8Activation (fp8_out)."""
        if self.fn_fp8 is not None and self.takes_fp8_input(x.shape[0], x.is_cuda):
            return self.fn_fp8(x)
        return self.fn(x)
