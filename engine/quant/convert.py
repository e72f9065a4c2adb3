"""Once every checkpoint tensor of a layer is in: the kernel's layout, and the forward that reads it.

Every 4-bit format becomes integers q [N, K] in 0..15, scales [N, K/G] and zeros [N, K/G] with
W = (q - zero) * scale, handed to kernels.w4a16.pack_w4a16; every FP8 format becomes kernels.fp8_linear's
weight [N, K] with one float32 scale per output row. The checkpoint tensors are dropped.
"""
from __future__ import annotations

import torch

from engine.quant.forward import Fp8Weight, W4A16Weight, fp8_forward, w4a16_forward
from engine.quant.regroup import regroup
from engine.quant.scheme import UnsupportedQuantization
from engine.quant.unpack import AWQ_NIBBLE_OF, unpack_int4
from kernels.w4a16 import pack_w4a16


def to_kernel_layout(method, layer) -> None:
    if method.scheme.is_w4a16:
        _to_w4a16(method, layer)
    else:
        _to_fp8(method, layer)


def _drop(layer, names) -> None:
    for name in names:
        delattr(layer, name)


def _w4a16_integers(method, layer):
    """(q [N, K], scales [N, NG], zeros [N, NG] or None, g_idx [K] or None) as the checkpoint means them."""
    f = method.scheme.format
    if f == "awq":
        q = unpack_int4(layer.qweight.data, 1, AWQ_NIBBLE_OF).t()
        zeros = unpack_int4(layer.qzeros.data, 1, AWQ_NIBBLE_OF).t()
        return q, layer.scales.data.t(), zeros, None
    if f == "gptq":
        q = unpack_int4(layer.qweight.data, 0).t()
        zeros = unpack_int4(layer.qzeros.data, 1).t() + (1 if method.scheme.gptq_v1_zeros else 0)
        g_idx = layer.g_idx.data
        if not all(torch.equal(g_idx[0], g) for g in g_idx[1:]):
            raise UnsupportedQuantization(f"GPTQ: the merged projections of {type(layer).__name__} have different "
                                          "g_idx orders; they share one input and must share its order")
        return q, layer.scales.data.t(), zeros, g_idx[0]
    # compressed-tensors pack-quantized: stored value = signed q + 8, and so is a packed zero point
    _check_weight_shape(layer)
    zeros = unpack_int4(layer.weight_zero_point.data, 0) if method.scheme.asymmetric else None
    return unpack_int4(layer.weight_packed.data, 1), layer.weight_scale.data, zeros, None


def _check_weight_shape(layer) -> None:
    expected = torch.tensor([[n, layer.full_in_features] for n in layer.full_output_sizes])
    if not torch.equal(layer.weight_shape.data.cpu(), expected):
        raise UnsupportedQuantization(f"compressed-tensors weight_shape {layer.weight_shape.data.tolist()} is not "
                                      f"{type(layer).__name__}'s {expected.tolist()}")


def _to_w4a16(method, layer) -> None:
    scheme, s = method.scheme, method.shape
    q, scales, zeros, g_idx = _w4a16_integers(method, layer)
    group = s.in_features if scheme.group_size == -1 else scheme.group_size  # -1: one group, this rank's row
    zeros_num = torch.full_like(scales, 8) if zeros is None else zeros.to(scales.dtype)
    perm, pad = None, False
    if g_idx is not None:
        local = g_idx.long()
        if s.groups_sliced(scheme):
            local = local - layer.input_start // group
        elif scheme.group_size == -1:
            local = torch.zeros_like(local)
        q, scales, zeros_num, perm, pad = regroup(q, local, scales, zeros_num, group)
    packed = pack_w4a16(q.contiguous(), scales.contiguous(), zeros_num.contiguous(), group, method.act_dtype)
    _drop(layer, [spec.name for spec in method.specs])
    for name, t in zip(("w4_qweight", "w4_scales", "w4_zeros"), packed):
        layer.register_buffer(name, t)
    if perm is not None:
        layer.register_buffer("w4_perm", perm)
    layer.weight = W4A16Weight(packed, group, perm, pad)
    layer.linear = w4a16_forward


def _to_fp8(method, layer) -> None:
    scheme = method.scheme
    weight = layer.weight.data
    if scheme.format == "fp8-online":
        row_scale = layer.weight_scale
        del layer.weight_scale
    elif scheme.per_tensor_weight_scale:  # each merged tensor's scale over its rows: exact, no requantization
        sizes = torch.tensor(layer.output_sizes, device=weight.device)
        row_scale = torch.repeat_interleave(layer.weight_scale.data, sizes)
    else:
        row_scale = layer.weight_scale.data.reshape(-1)
    input_scale = None
    if scheme.static_input_scale:
        # q, k, v (or gate, up) read the same x, which is quantized once for the merged matmul: the largest
        # calibrated scale clips none of them (a smaller one would clip the x the others were calibrated on).
        input_scale = layer.input_scale.data.max().float()
    _drop(layer, [spec.name for spec in method.specs])
    layer.register_buffer("fp8_weight", weight)
    layer.register_buffer("fp8_weight_scale", row_scale.float().contiguous())
    if input_scale is not None:
        layer.register_buffer("fp8_input_scale", input_scale)
    layer.weight = Fp8Weight(layer.fp8_weight, layer.fp8_weight_scale, input_scale)
    layer.linear = fp8_forward


def finish_quantized_layers(model: torch.nn.Module) -> None:
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if method is not None and not getattr(module, "quant_finished", False):
            method.finish(module)
            module.quant_finished = True
