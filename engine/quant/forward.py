"""What a quantized layer's forward calls, with the layer's kernel-layout tensors (set by finish)."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from kernels.fp8_linear import fp8_linear
from kernels.w4a16 import W4A16Tensors, w4a16_linear


class W4A16Weight(NamedTuple):
    tensors: W4A16Tensors
    group_size: int
    perm: torch.Tensor | None  # GPTQ act order: x's columns in the packed weight's order
    pad: bool  # perm reads an appended zero column (groups padded to G)


class Fp8Weight(NamedTuple):
    weight: torch.Tensor  # [N, K] float8_e4m3fn
    weight_scale: torch.Tensor  # [N] float32
    input_scale: torch.Tensor | None  # static: one float32 scale; None: per-token dynamic


def w4a16_forward(x: torch.Tensor, w: W4A16Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    if w.perm is not None:
        x = (F.pad(x, (0, 1)) if w.pad else x).index_select(-1, w.perm)
    return w4a16_linear(x, w.tensors, w.group_size, bias)


def fp8_forward(x: torch.Tensor, w: Fp8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    return fp8_linear(x, w.weight, w.weight_scale, w.input_scale, bias)
