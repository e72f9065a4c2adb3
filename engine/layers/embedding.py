"""Vocabulary-parallel embedding and LM head: each rank holds a contiguous slice of the vocabulary."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.layers.linear import select_linear
from engine.parallel import all_gather_last_dim, all_reduce, tp_rank, tp_size


class VocabParallelEmbedding(nn.Module):
    """reduce_results=False: each rank returns the rows of the ids in its shard and zeros elsewhere, and the
    caller sums over the group (the first layer's norm does, fused, see engine.layers.norm)."""

    def __init__(self, vocab_size: int, hidden: int, reduce_results: bool = True):
        super().__init__()
        self.reduce_results = reduce_results
        self.vocab_size = vocab_size
        self.shard = (vocab_size + tp_size() - 1) // tp_size()  # padded so every rank's shard is equal
        self.start = tp_rank() * self.shard
        self.weight = nn.Parameter(torch.zeros(self.shard, hidden), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None):
        rows = max(0, min(self.shard, self.vocab_size - self.start))
        param.data.zero_()
        param.data[:rows].copy_(loaded[self.start:self.start + rows])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if tp_size() == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        mask = (local < 0) | (local >= self.shard)
        out = F.embedding(local.masked_fill(mask, 0), self.weight)
        out.masked_fill_(mask.unsqueeze(-1), 0)
        return all_reduce(out) if self.reduce_results else out


class ParallelLMHead(VocabParallelEmbedding):
    def __init__(self, vocab_size: int, hidden: int):
        super().__init__(vocab_size, hidden)
        self.linear = select_linear()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = all_gather_last_dim(self.linear(hidden, self.weight))
        return logits[..., :self.vocab_size]
