"""4-bit weights, 16-bit activations (AWQ, GPTQ, compressed-tensors pack-quantized all land here).

The loaders (engine/quant/) unpack each checkpoint format into plain integers and call `pack_w4a16`, which
lays them out the way `w4a16_linear` reads them; so every format shares one kernel and the layout is this
file's business alone. Dequantized weight: W[n, k] = (q[n, k] - zero[n, k // G]) * scale[n, k // G].

SKELETON: the torch reference only. The Triton GEMM/GEMV (CUDA) replace the body of `w4a16_linear`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class W4A16Tensors(NamedTuple):
    """What a layer keeps (registered as buffers by engine/quant): layout defined by pack_w4a16."""
    qweight: torch.Tensor  # [N, K // 8] int32: nibble i of word j is q[n, 8 j + i]
    scales: torch.Tensor  # [N, K // G] in the activation dtype
    zeros: torch.Tensor  # [N, K // G] in the activation dtype: the zero point as a number (8 when symmetric)


def pack_w4a16(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group_size: int,
               dtype: torch.dtype) -> W4A16Tensors:
    """q [N, K] integers in 0..15 (any int dtype), scales [N, K // G], zeros [N, K // G] integers or None
    (symmetric: 8) -> the tensors w4a16_linear reads, on q's device."""
    N, K = q.shape
    assert K % 8 == 0 and K % group_size == 0 and scales.shape == (N, K // group_size)
    nibbles = q.to(torch.int32).view(N, K // 8, 8)
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=q.device)
    qweight = (nibbles << shifts).sum(-1, dtype=torch.int32)
    z = torch.full_like(scales, 8, dtype=dtype) if zeros is None else zeros.to(dtype)
    return W4A16Tensors(qweight.contiguous(), scales.to(dtype).contiguous(), z.contiguous())


def unpack_w4a16(t: W4A16Tensors) -> torch.Tensor:
    """The integers pack_w4a16 was given, [N, K] int32."""
    N = t.qweight.shape[0]
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=t.qweight.device)
    return ((t.qweight[:, :, None] >> shifts) & 0xF).reshape(N, -1)


def w4a16_dequantize(t: W4A16Tensors, group_size: int) -> torch.Tensor:
    """The dense [N, K] weight in float32."""
    q = unpack_w4a16(t).float()
    s = t.scales.float().repeat_interleave(group_size, dim=1)
    z = t.zeros.float().repeat_interleave(group_size, dim=1)
    return (q - z) * s


def w4a16_linear_ref(x: torch.Tensor, t: W4A16Tensors, group_size: int,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    out = x.float() @ w4a16_dequantize(t, group_size).t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def w4a16_linear(x: torch.Tensor, t: W4A16Tensors, group_size: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] -> [M, N] in x's dtype."""
    return w4a16_linear_ref(x, t, group_size, bias)
