from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SiluAndMul(nn.Module):
    """silu(gate) * up for a merged [gate | up] projection."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            from kernels import silu_and_mul

            return silu_and_mul(x)
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
