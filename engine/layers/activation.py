"""silu(gate) * up: the Triton kernel on CUDA, plain torch elsewhere (chosen when the layer is built)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.layers.backend import building_on_cuda


def silu_and_mul_torch(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


class SiluAndMul(nn.Module):
    """silu(gate) * up for a merged [gate | up] projection."""

    def __init__(self):
        super().__init__()
        if building_on_cuda():
            from kernels import silu_and_mul

            self.fn = silu_and_mul
        else:
            self.fn = silu_and_mul_torch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)
