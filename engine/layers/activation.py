"""silu(gate) * up: the Triton kernel on CUDA, plain torch elsewhere (chosen when the layer is built); for an FP8
down projection with per-token activation scales, the product quantized in the same kernel."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.layers.backend import building_on_cuda
from kernels.fp8_linear import Fp8Activation, quantize_fp8_per_token_ref, takes_fp8_input


def silu_and_mul_torch(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_and_mul_fp8_torch(x: torch.Tensor) -> Fp8Activation:
    y = silu_and_mul_torch(x)
    return Fp8Activation(*quantize_fp8_per_token_ref(y), y.dtype)


class SiluAndMul(nn.Module):
    """silu(gate) * up for a merged [gate | up] projection. fp8_out: the down projection after it is FP8 with
    per-token activation scales; where it would quantize its input (kernels.fp8_linear.takes_fp8_input) this
    hands it an Fp8Activation instead (kernels/fp8_silu_quant.py: the 16-bit product never reaches memory)."""

    def __init__(self, fp8_out: bool = False):
        super().__init__()
        self.fn_fp8 = None
        if building_on_cuda():
            from kernels import silu_and_mul
            from kernels.fp8_silu_quant import silu_and_mul_quant_fp8

            self.fn = silu_and_mul
            if fp8_out:
                self.fn_fp8 = lambda x: Fp8Activation(*silu_and_mul_quant_fp8(x), x.dtype)
        else:
            self.fn = silu_and_mul_torch
            if fp8_out:
                self.fn_fp8 = silu_and_mul_fp8_torch

    def forward(self, x: torch.Tensor) -> torch.Tensor | Fp8Activation:
        if self.fn_fp8 is not None and takes_fp8_input(x.shape[0], x.is_cuda):
            return self.fn_fp8(x)
        return self.fn(x)
