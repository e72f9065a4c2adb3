"""Linear layers that shard across the tensor-parallel group as their weights load.

Column-parallel layers split the output features (no communication); row-parallel layers split the
input features and all-reduce their partial sums. Each parameter carries a `weight_loader` that
takes the full checkpoint tensor and keeps this rank's slice, so no rank ever holds the whole model.

Each parameter also says which of its axes runs over the output features (`output_dim`) and which over
the input features (`input_dim`), and how many features one element stands for along each (`output_div`,
`input_div`: 8 for int4 packed into int32, the group size for a group's scale). So the same loaders shard
the plain weight and every quantized tensor (engine/quant): scales, zeros and g_idx follow their weights.
`per_shard` parameters hold one entry per checkpoint tensor merged into the layer (FP8 per-tensor scales).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.layers.backend import building_on_cuda
from engine.parallel import all_reduce, head_shard, tp_rank, tp_size


def select_linear():
    """The matmul a layer built now calls: F.linear, except that on a GPU one row (decode at batch 1) goes
    through kernels.gemv and 2 to skinny_gemm.MAX_M rows of 16-bit activations through kernels.skinny_gemm, which
    read the weight faster than cuBLAS does at those shapes (docs/perf-kernels.md)."""
    if not building_on_cuda():
        return F.linear
    from kernels import gemv
    from kernels import skinny_gemm as skinny

    def linear_on_cuda(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() == 2:
            if x.shape[0] == 1:
                return gemv(x, weight, bias)
            if x.shape[0] <= skinny.MAX_M and x.dtype != torch.float32:  # fp32 stays exact (no tf32)
                return skinny.skinny_gemm(x, weight, bias)
        return F.linear(x, weight, bias)
    return linear_on_cuda


def set_axes(param: torch.Tensor, output_dim: int | None, input_dim: int | None, output_div: int = 1,
             input_div: int = 1, per_shard: bool = False) -> torch.Tensor:
    param.output_dim, param.input_dim, param.output_div, param.input_div = output_dim, input_dim, output_div, input_div
    param.per_shard = per_shard
    return param


def _narrow(t: torch.Tensor, dim: int, div: int, start: int, size: int, what: str) -> torch.Tensor:
    if start % div or size % div:
        raise ValueError(f"{what} features [{start}, {start + size}) do not split into blocks of {div}")
    return t.narrow(dim, start // div, size // div)


class _Linear(nn.Module):
    """Subclasses set, before calling this: output_sizes (each merged checkpoint tensor's output features on
    this rank), full_output_sizes (the same, whole), input_start and full_in_features."""
    splits_input = False

    def __init__(self, in_features: int, out_features: int, bias: bool, quant=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        if quant is None:
            self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
            set_axes(self.weight, 0, 1).weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)
            set_axes(self.bias, 0, None).weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)
        self.linear = select_linear()
        self.quant_method = None
        if quant is not None:  # the method registers the checkpoint's tensors; finish() swaps in the kernel's
            from engine.quant.method import make_method

            self.quant_method = make_method(quant, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x, self.weight, self.bias)

    def shard_index(self, shard_id) -> int:
        return 0

    def output_placement(self, shard_id) -> tuple[int, int, int]:
        """(offset in this rank's output features, offset in the checkpoint tensor's, size) of shard_id."""
        n = self.out_features
        return 0, tp_rank() * n, n

    def shard_views(self, param: torch.Tensor, loaded: torch.Tensor, shard_id=None):
        """(this rank's part of param, the part of the checkpoint tensor that goes there)."""
        if param.per_shard:
            dst = param.data[self.shard_index(shard_id)]
            return dst, loaded.reshape(dst.shape)
        if param.output_dim is None:
            return param.data, loaded
        dst_offset, src_offset, size = self.output_placement(shard_id)
        d, div = param.output_dim, param.output_div
        return (_narrow(param.data, d, div, dst_offset, size, "output"),
                _narrow(loaded, d, div, src_offset, size, "output"))

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None):
        hook = getattr(param, "load_hook", None)  # quantized tensors: dtype checks, FP8 quantization
        if hook is not None:
            return hook(self, param, loaded, shard_id)
        dst, src = self.shard_views(param, loaded, shard_id)
        dst.copy_(src)


class ColumnParallelLinear(_Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = False, quant=None):
        assert out_features % tp_size() == 0, f"{out_features} output features do not split over {tp_size()} ranks"
        if not hasattr(self, "output_sizes"):
            self.output_sizes, self.full_output_sizes = [out_features // tp_size()], [out_features]
        self.input_start, self.full_in_features = 0, in_features
        super().__init__(in_features, out_features // tp_size(), bias, quant)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of one input stored as one matrix (gate and up)."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False, quant=None):
        self.full_output_sizes = list(output_sizes)
        self.output_sizes = [s // tp_size() for s in output_sizes]
        super().__init__(in_features, sum(output_sizes), bias, quant)

    def shard_index(self, shard_id: int) -> int:
        return shard_id

    def output_placement(self, shard_id: int) -> tuple[int, int, int]:
        size = self.output_sizes[shard_id]
        return sum(self.output_sizes[:shard_id]), tp_rank() * size, size


class QKVParallelLinear(_Linear):
    """q, k and v projections in one matrix; each rank holds its heads (see engine.parallel.head_shard)."""

    def __init__(self, hidden: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False,
                 quant=None):
        self.head_dim = head_dim
        self.q_heads = head_shard(num_heads, num_kv_heads, tp_rank(), tp_size())[:2]
        self.kv_heads = head_shard(num_heads, num_kv_heads, tp_rank(), tp_size())[2:]
        self.num_heads = self.q_heads[1] - self.q_heads[0]
        self.num_kv_heads = self.kv_heads[1] - self.kv_heads[0]
        q_size, kv_size = self.num_heads * head_dim, self.num_kv_heads * head_dim
        self.output_sizes = [q_size, kv_size, kv_size]
        self.full_output_sizes = [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]
        self.input_start, self.full_in_features = 0, hidden
        super().__init__(hidden, q_size + 2 * kv_size, bias, quant)

    def shard_index(self, shard_id: str) -> int:
        return "qkv".index(shard_id)

    def output_placement(self, shard_id: str) -> tuple[int, int, int]:
        d = self.head_dim
        q_size, kv_size = self.output_sizes[0], self.output_sizes[1]
        if shard_id == "q":
            return 0, self.q_heads[0] * d, q_size
        return q_size + (0 if shard_id == "k" else kv_size), self.kv_heads[0] * d, kv_size


class RowParallelLinear(_Linear):
    """Splits the input features: evenly, or by the given [start, end) (attention output follows its heads).

    reduce_results=False returns this rank's partial sum (the bias counted on rank 0 only) and leaves the
    all-reduce to the caller, which fuses it into the RMSNorm that follows (engine.layers.norm)."""
    splits_input = True

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 input_range: tuple[int, int] | None = None, reduce_results: bool = True, quant=None):
        self.reduce_results = reduce_results
        if input_range is None:
            assert in_features % tp_size() == 0, f"{in_features} input features do not split over {tp_size()} ranks"
            n = in_features // tp_size()
            input_range = (tp_rank() * n, (tp_rank() + 1) * n)
        self.input_start, self.full_in_features = input_range[0], in_features
        self.output_sizes, self.full_output_sizes = [out_features], [out_features]
        super().__init__(input_range[1] - input_range[0], out_features, bias, quant)

    def shard_views(self, param: torch.Tensor, loaded: torch.Tensor, shard_id=None):
        src = loaded  # the bias (and any tensor without an input axis) is whole on every rank
        if param.input_dim is not None:
            src = _narrow(loaded, param.input_dim, param.input_div, self.input_start, self.in_features, "input")
        if param.per_shard:
            return param.data[0], src.reshape(param.shape[1:])
        return param.data, src

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.reduce_results:
            return self.linear(x, self.weight, self.bias if tp_rank() == 0 else None)
        y = all_reduce(self.linear(x, self.weight))
        return y if self.bias is None else y + self.bias
