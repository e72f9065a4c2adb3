"""4-bit weights, 16-bit activations (AWQ, GPTQ, compressed-tensors pack-quantized all land here).

The loaders (engine/quant/) unpack each checkpoint format into plain integers and call `pack_w4a16`, which
lays them out the way the kernels read them; so every format shares one kernel and the layout is this
file's business alone. Dequantized weight: W[n, k] = (q[n, k] - zero[n, k // G]) * scale[n, k // G].

The packed layout (why: kernels/w4a16_gemv.py reads it). K is cut into blocks of 8 P, P = plane_words(K) (32 for
every real model: K a multiple of 256); a block is P int32 words per row, and nibble i of word j of block b holds
q[n, 8 P b + P i + j]. So the 8 nibbles a kernel takes out of a tile of words with one shift each ("plane" i)
are each a run of P consecutive k: the matching activations are one contiguous load, and a plane is a ready
[rows, P] operand for tl.dot (no reshapes, no gathers). qweight is [N, K // 8]: no padding, so K is its width.

On a GPU `w4a16_linear` runs a GEMV for one or two rows (decode), a tensor-core GEMM up to GEMM_MAX_M rows, and
for more (prefill, large batches) dequantizes the weight to a dense matrix (kernels/w4a16_dequant.py) for cuBLAS;
all chosen from the shapes alone (CUDA-graph safe). On the CPU it keeps the torch reference.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

GEMV_MAX_M = 2  # rows up to which the GEMV beats the GEMM (H200, benchmarks/w4a16_gemm.py: not at 8)
GEMM_MAX_M = 128  # rows up to which the GEMM beats dequantizing the weight for cuBLAS (H200, benchmarks/w4a16_gemm.py)


class W4A16Tensors(NamedTuple):
    """What a layer keeps (registered as buffers by engine/quant): layout defined by pack_w4a16."""
    qweight: torch.Tensor  # [N, K // 8] int32: nibble i of word P b + j is q[n, 8 P b + P i + j], P = plane_words(K)
    scales: torch.Tensor  # [N, K // G] in the activation dtype
    zeros: torch.Tensor  # [N, K // G] in the activation dtype: the zero point as a number (8 when symmetric)


def plane_words(K: int) -> int:
    """Words per plane: the largest power of two up to 32 that divides K // 8."""
    p = 32
    while (K // 8) % p:
        p //= 2
    return p


def _planes(qweight: torch.Tensor) -> torch.Tensor:
    """qweight [N, K // 8] -> q [N, K] int32 (nibble i of word P b + j is k = 8 P b + P i + j)."""
    N, words = qweight.shape
    p = plane_words(words * 8)
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=qweight.device).view(1, 1, 8, 1)
    return ((qweight.view(N, words // p, 1, p) >> shifts) & 0xF).reshape(N, words * 8)


def pack_w4a16(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group_size: int,
               dtype: torch.dtype) -> W4A16Tensors:
    """q [N, K] integers in 0..15 (any int dtype), scales [N, K // G], zeros [N, K // G] integers or None
    (symmetric: 8) -> the tensors w4a16_linear reads, on q's device."""
    N, K = q.shape
    assert K % 8 == 0 and K % group_size == 0 and scales.shape == (N, K // group_size)
    p = plane_words(K)
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=q.device).view(1, 1, 8, 1)
    planes = q.to(torch.int32).view(N, K // (8 * p), 8, p) << shifts
    qweight = planes.sum(2, dtype=torch.int32).view(N, K // 8)  # disjoint bits: the sum is an OR
    z = torch.full_like(scales, 8, dtype=dtype) if zeros is None else zeros.to(dtype)
    return W4A16Tensors(qweight.contiguous(), scales.to(dtype).contiguous(), z.contiguous())


def unpack_w4a16(t: W4A16Tensors) -> torch.Tensor:
    """The integers pack_w4a16 was given, [N, K] int32."""
    return _planes(t.qweight)


def w4a16_dequantize(t: W4A16Tensors, group_size: int) -> torch.Tensor:
    """The dense [N, K] weight in float32."""
    s = t.scales.float().repeat_interleave(group_size, dim=1)
    z = t.zeros.float().repeat_interleave(group_size, dim=1)
    return (_planes(t.qweight).float() - z) * s


def w4a16_linear_ref(x: torch.Tensor, t: W4A16Tensors, group_size: int,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    out = x.float() @ w4a16_dequantize(t, group_size).t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def planes_per_group(K: int, group_size: int) -> int:
    """How many consecutive planes of a block share one scale, or 0 where the kernels cannot take this group
    size (a group boundary inside a plane, or inside a kernel's run of planes)."""
    p = plane_words(K)
    if group_size % p:
        return 0
    if (8 * p) % group_size == 0:
        return group_size // p
    return 8 if group_size % (8 * p) == 0 or group_size == K else 0


def w4a16_linear(x: torch.Tensor, t: W4A16Tensors, group_size: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] -> [M, N] in x's dtype."""
    K = t.qweight.shape[1] * 8
    if not x.is_cuda or not planes_per_group(K, group_size):
        return w4a16_linear_ref(x, t, group_size, bias)
    from kernels.w4a16_gemm import w4a16_gemm
    from kernels.w4a16_gemv import w4a16_gemv

    x2 = x.reshape(-1, K)
    M = x2.shape[0]
    if M == 0:
        return x.new_empty(*x.shape[:-1], t.qweight.shape[0])
    if M <= GEMV_MAX_M or plane_words(K) < 16:  # tl.dot needs 16 k; tiny models only
        out = w4a16_gemv(x2, t, group_size, bias)
    elif M <= GEMM_MAX_M:
        out = w4a16_gemm(x2, t, group_size, bias)
    else:
        from kernels.w4a16_dequant import w4a16_dequantize_dense
        out = torch.nn.functional.linear(x2, w4a16_dequantize_dense(t, group_size, x.dtype), bias)
    return out.view(*x.shape[:-1], out.shape[-1])
