"""A quantized linear layer's life: its checkpoint tensors are registered when the layer is built, each is
sharded as it loads (the layer's own loaders, engine.layers.linear), and `finish` turns them into the
kernel's layout once every tensor is in (engine.quant.convert), then the layer's forward calls the kernel.

`--quantization fp8` on a 16/32-bit checkpoint quantizes each weight the moment it arrives, on the device,
with per-output-channel scales over the whole row (so every tensor-parallel split gives the same scales):
a rank never holds a 16-bit layer beyond the one tensor being loaded.
"""
from __future__ import annotations

import torch
from torch import nn

from engine.layers.linear import set_axes
from engine.quant.formats import LayerShape, TensorSpec, tensor_specs
from engine.quant.scheme import QuantScheme, UnsupportedQuantization
from kernels.fp8_linear import FP8_DTYPE, FP8_MAX

PACKED_OUTPUTS = {"awq": 8, "gptq": 8, "ct-pack": 8}  # qzeros / weight_zero_point pack 8 outputs per word
PACKED_INPUTS = {"gptq": 8, "ct-pack": 8}


def make_method(scheme: QuantScheme, layer: nn.Module) -> "QuantMethod":
    from engine.parallel import tp_size

    shape = LayerShape(layer.out_features, layer.in_features, layer.full_in_features, len(layer.output_sizes),
                       layer.splits_input, tp_size())
    method = QuantMethod(scheme, shape, torch.get_default_dtype())
    method.check_divides(layer)
    method.register(layer)
    return method


class QuantMethod:
    def __init__(self, scheme: QuantScheme, shape: LayerShape, act_dtype: torch.dtype):
        self.scheme, self.shape, self.act_dtype = scheme, shape, act_dtype
        self.specs = tensor_specs(scheme, shape)

    def check_divides(self, layer) -> None:
        """A shard that does not split into whole packs and groups is an error now, not a wrong load."""
        s, f = self.shape, self.scheme.format
        problems = []
        out_pack = PACKED_OUTPUTS.get(f, 1)
        for i, size in enumerate(layer.output_sizes):
            shard_id = ("q", "k", "v")[i] if len(layer.output_sizes) == 3 else i
            src = layer.output_placement(shard_id)[1] if not layer.splits_input else 0
            if size % out_pack or src % out_pack:
                problems.append(f"output shard of {size} features at {src} is not whole words of {out_pack}")
        if self.scheme.is_w4a16:
            group = s.group(self.scheme)
            if s.full_in_features % group:
                problems.append(f"{s.full_in_features} input features are not whole groups of {group}")
            step = group if s.groups_sliced(self.scheme) else PACKED_INPUTS.get(f, 1)
            if s.in_features % step or layer.input_start % step:
                problems.append(f"this rank's input features [{layer.input_start}, "
                                f"{layer.input_start + s.in_features}) are not whole blocks of {step}")
            if s.in_features % 8:
                problems.append(f"{s.in_features} input features are not a multiple of 8")
        if problems:
            raise UnsupportedQuantization(f"{type(layer).__name__} ({s.full_in_features} -> "
                                          f"{sum(layer.full_output_sizes)}, tensor parallel {s.tp}) cannot hold "
                                          f"{self.scheme.describe()}: " + "; ".join(problems))

    def register(self, layer) -> None:
        for spec in self.specs:
            p = nn.Parameter(torch.empty(spec.shape, dtype=spec.dtype), requires_grad=False)
            set_axes(p, spec.output_dim, spec.input_dim, spec.output_div, spec.input_div, spec.per_shard)
            p.weight_loader, p.raw_checkpoint_tensor, p.quantized = layer.weight_loader, True, True
            p.load_hook = self._load_online_fp8 if self.scheme.format == "fp8-online" else self._load_checked
            p.spec = spec
            layer.register_parameter(spec.name, p)
        if self.scheme.format == "fp8-online":  # computed as the weight loads, never read from the checkpoint
            layer.register_buffer("weight_scale", set_axes(torch.empty(self.shape.out_features, dtype=torch.float32), 0,
                                                           None))

    def _load_checked(self, layer, param, loaded: torch.Tensor, shard_id) -> None:
        spec: TensorSpec = param.spec
        if loaded.dtype not in spec.checkpoint_dtypes:
            raise UnsupportedQuantization(
                f"{self.scheme.format} tensor {spec.name} is {loaded.dtype} in the checkpoint; the format stores "
                f"{', '.join(str(d) for d in spec.checkpoint_dtypes)}")
        if spec.name == "weight_scale" and len(spec.shape) == 2 and loaded.dim() == 1:
            loaded = loaded[:, None]  # per-channel scales saved as [N] rather than [N, 1]
        dst, src = layer.shard_views(param, loaded.to(spec.dtype), shard_id)
        if dst.shape != src.shape:
            raise UnsupportedQuantization(f"{self.scheme.format} tensor {spec.name} of shape {tuple(loaded.shape)} "
                                          f"does not fit {type(layer).__name__}'s {tuple(dst.shape)} shard")
        dst.copy_(src)

    def _load_online_fp8(self, layer, param, loaded: torch.Tensor, shard_id) -> None:
        if not loaded.dtype.is_floating_point or loaded.dtype == FP8_DTYPE:
            raise UnsupportedQuantization(f"--quantization fp8 quantizes 16/32-bit weights; got {loaded.dtype}")
        loaded = loaded.to(param.device)
        row_scale = (loaded.abs().amax(dim=1).float() / FP8_MAX).clamp(min=1e-12)  # over the whole row
        dst_scale, src_scale = layer.shard_views(layer.weight_scale, row_scale, shard_id)
        dst_scale.copy_(src_scale)
        dst, src = layer.shard_views(param, loaded, shard_id)
        if dst.shape != src.shape:
            raise UnsupportedQuantization(f"weight of shape {tuple(loaded.shape)} does not fit "
                                          f"{type(layer).__name__}'s {tuple(dst.shape)} shard")
        dst.copy_((src.float() / src_scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE))

    def finish(self, layer) -> None:
        from engine.quant.convert import to_kernel_layout

        to_kernel_layout(self, layer)

    @torch.no_grad()
    def fill_dummy(self, layer) -> None:
        """Random weights straight into the checkpoint-format tensors (no 16-bit copy), about as large as the
        unquantized dummy weights (|w| <= 0.02), so activations stay finite."""
        from engine.quant.dummy import fill_dummy

        fill_dummy(self, layer)
