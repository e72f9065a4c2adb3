"""Linear layers that shard across the tensor-parallel group as their weights load.

Column-parallel layers split the output features (no communication); row-parallel layers split the
input features and all-reduce their partial sums. Each parameter carries a `weight_loader` that
takes the full checkpoint tensor and keeps this rank's slice, so no rank ever holds the whole model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.layers.backend import building_on_cuda
from engine.parallel import all_reduce, head_shard, tp_rank, tp_size


def select_linear():
    """The matmul a layer built now calls: F.linear, except that on a GPU one row (decode at batch 1) goes
    through kernels.gemv, which reads the weight faster than cuBLAS does at that shape (docs/perf-kernels.md)."""
    if not building_on_cuda():
        return F.linear
    from kernels import gemv

    def linear_on_cuda(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() == 2 and x.shape[0] == 1:
            return gemv(x, weight, bias)
        return F.linear(x, weight, bias)
    return linear_on_cuda


class _Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)
        self.linear = select_linear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x, self.weight, self.bias)


class ColumnParallelLinear(_Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        assert out_features % tp_size() == 0, f"{out_features} output features do not split over {tp_size()} ranks"
        super().__init__(in_features, out_features // tp_size(), bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None):
        n = param.shape[0]
        param.data.copy_(loaded.narrow(0, tp_rank() * n, n))


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of one input stored as one matrix (gate and up)."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False):
        self.output_sizes = output_sizes
        super().__init__(in_features, sum(output_sizes), bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int):
        size = self.output_sizes[shard_id] // tp_size()
        offset = sum(self.output_sizes[:shard_id]) // tp_size()
        param.data.narrow(0, offset, size).copy_(loaded.narrow(0, tp_rank() * size, size))


class QKVParallelLinear(_Linear):
    """q, k and v projections in one matrix; each rank holds its heads (see engine.parallel.head_shard)."""

    def __init__(self, hidden: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False):
        self.head_dim = head_dim
        self.q_heads = head_shard(num_heads, num_kv_heads, tp_rank(), tp_size())[:2]
        self.kv_heads = head_shard(num_heads, num_kv_heads, tp_rank(), tp_size())[2:]
        self.num_heads = self.q_heads[1] - self.q_heads[0]
        self.num_kv_heads = self.kv_heads[1] - self.kv_heads[0]
        super().__init__(hidden, (self.num_heads + 2 * self.num_kv_heads) * head_dim, bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str):
        d = self.head_dim
        q_size, kv_size = self.num_heads * d, self.num_kv_heads * d
        if shard_id == "q":
            dst, src = param.data.narrow(0, 0, q_size), loaded.narrow(0, self.q_heads[0] * d, q_size)
        else:
            offset = q_size + (0 if shard_id == "k" else kv_size)
            dst, src = param.data.narrow(0, offset, kv_size), loaded.narrow(0, self.kv_heads[0] * d, kv_size)
        dst.copy_(src)


class RowParallelLinear(_Linear):
    """Splits the input features: evenly, or by the given [start, end) (attention output follows its heads).

    reduce_results=False returns this rank's partial sum (the bias counted on rank 0 only) and leaves the
    all-reduce to the caller, which fuses it into the RMSNorm that follows (engine.layers.norm)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 input_range: tuple[int, int] | None = None, reduce_results: bool = True):
        self.reduce_results = reduce_results
        if input_range is None:
            assert in_features % tp_size() == 0, f"{in_features} input features do not split over {tp_size()} ranks"
            n = in_features // tp_size()
            input_range = (tp_rank() * n, (tp_rank() + 1) * n)
        self.input_start = input_range[0]
        super().__init__(input_range[1] - input_range[0], out_features, bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None):
        if param.dim() == 1:  # the bias is added once, after the all-reduce
            param.data.copy_(loaded)
            return
        param.data.copy_(loaded.narrow(1, self.input_start, param.shape[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.reduce_results:
            return self.linear(x, self.weight, self.bias if tp_rank() == 0 else None)
        y = all_reduce(self.linear(x, self.weight))
        return y if self.bias is None else y + self.bias
