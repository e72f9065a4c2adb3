"""The tensors each checkpoint format stores for one linear layer, exactly as published, on one rank.

Shapes are [rows, cols] as on disk, N output features and K input features of this rank's shard; G is the
group size (the whole row when the checkpoint has one group per row). A spec says which axis runs over the
outputs and which over the inputs and how many features one element covers (engine.layers.linear.set_axes):
- AWQ GEMM:  qweight int32 [K, N/8] (8 outputs per word, AWQ's interleaved order), qzeros int32 [K/G, N/8],
             scales fp16 [K/G, N].
- GPTQ:      qweight int32 [K/8, N] (8 inputs per word, in order), qzeros int32 [K/G, N/8] (v1: zero - 1),
             scales fp16 [K/G, N], g_idx int32 [K] (each input feature's group).
- compressed-tensors pack-quantized: weight_packed int32 [N, K/8] (value + 8, in order), weight_scale
             [N, K/G], weight_zero_point int32 [N/8, K/G] (asymmetric only, packed along N), weight_shape [2].
- FP8:       weight float8_e4m3fn [N, K], weight_scale float32 [N, 1] (per channel) or one per tensor,
             input_scale one per tensor when static.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.quant.scheme import QuantScheme

FLOATS = (torch.float16, torch.bfloat16, torch.float32)
INTS = (torch.int32,)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype  # what the layer holds it in while loading
    checkpoint_dtypes: tuple[torch.dtype, ...]
    output_dim: int | None
    input_dim: int | None
    output_div: int = 1
    input_div: int = 1
    per_shard: bool = False  # one entry per merged checkpoint tensor (leading axis)


@dataclass(frozen=True, slots=True)
class LayerShape:
    """What a format needs to know of one layer on one rank."""
    out_features: int  # this rank's, every merged shard together
    in_features: int  # this rank's
    full_in_features: int
    num_shards: int
    splits_input: bool  # row-parallel: the input features are this rank's slice
    tp: int

    def group(self, scheme: QuantScheme) -> int:
        return self.full_in_features if scheme.group_size == -1 else scheme.group_size

    def groups_sliced(self, scheme: QuantScheme) -> bool:
        """Whether per-group tensors are cut along the input like the weight. Not when one group spans the
        row, nor for GPTQ desc_act under row parallelism: g_idx may send a rank's rows to any group."""
        one_group = scheme.group_size == -1
        act_order_split = scheme.desc_act and self.splits_input and self.tp > 1
        return self.splits_input and not one_group and not act_order_split

    def num_groups(self, scheme: QuantScheme) -> int:
        k = self.in_features if self.groups_sliced(scheme) else self.full_in_features
        return max(1, k // self.group(scheme))


def tensor_specs(scheme: QuantScheme, s: LayerShape) -> list[TensorSpec]:
    N, K = s.out_features, s.in_features
    G, ng = (s.group(scheme), s.num_groups(scheme)) if scheme.is_w4a16 else (1, 1)
    gdim = 0 if s.groups_sliced(scheme) else None  # the group axis follows the input only when sliced
    f = scheme.format
    if f == "awq":
        return [TensorSpec("qweight", (K, N // 8), torch.int32, INTS, 1, 0, 8, 1),
                TensorSpec("qzeros", (ng, N // 8), torch.int32, INTS, 1, gdim, 8, G),
                TensorSpec("scales", (ng, N), torch.float32, FLOATS, 1, gdim, 1, G)]
    if f == "gptq":
        return [TensorSpec("qweight", (K // 8, N), torch.int32, INTS, 1, 0, 1, 8),
                TensorSpec("qzeros", (ng, N // 8), torch.int32, INTS, 1, gdim, 8, G),
                TensorSpec("scales", (ng, N), torch.float32, FLOATS, 1, gdim, 1, G),
                TensorSpec("g_idx", (s.num_shards, K), torch.int32, INTS, None, 0, per_shard=True)]
    if f == "ct-pack":
        specs = [TensorSpec("weight_packed", (N, K // 8), torch.int32, INTS, 0, 1, 1, 8),
                 TensorSpec("weight_scale", (N, ng), torch.float32, FLOATS, 0, None if gdim is None else 1, 1, G),
                 TensorSpec("weight_shape", (s.num_shards, 2), torch.int64, (torch.int32, torch.int64), None, None,
                            per_shard=True)]
        if scheme.asymmetric:
            specs.append(TensorSpec("weight_zero_point", (N // 8, ng), torch.int32, INTS, 0,
                                    None if gdim is None else 1, 8, G))
        return specs
    if f in ("fp8", "ct-fp8"):
        specs = [TensorSpec("weight", (N, K), torch.float8_e4m3fn, (torch.float8_e4m3fn,), 0, 1)]
        if scheme.per_tensor_weight_scale:
            specs.append(TensorSpec("weight_scale", (s.num_shards,), torch.float32, FLOATS, None, None,
                                    per_shard=True))
        else:
            specs.append(TensorSpec("weight_scale", (N, 1), torch.float32, FLOATS, 0, None))
        if scheme.static_input_scale:
            specs.append(TensorSpec("input_scale", (s.num_shards,), torch.float32, FLOATS, None, None,
                                    per_shard=True))
        return specs
    if f == "fp8-online":  # the 16/32-bit weight arrives and is quantized on the spot (engine.quant.method)
        return [TensorSpec("weight", (N, K), torch.float8_e4m3fn, FLOATS, 0, 1)]
    raise ValueError(f"unknown quantization format {f!r}")
