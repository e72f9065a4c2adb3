"""One timing rule for the projection benchmarks: a CUDA graph of many calls cycling through weight copies.

A lone weight of tens of MB would sit in L2 from one call to the next; cycling through copies that total more than
L2 makes each call read its weight from HBM, as a model's layers do. The graph takes launch gaps out of it."""
from __future__ import annotations


def time_graph_us(fn, weights: list, x, calls: int = 48) -> float:
    """Microseconds per call of fn(x, w), w cycling through `weights`, replayed from a graph (after a warm-up)."""
    import torch

    from engine.cuda_graphs import replay_time_ms

    for w in weights:
        fn(x, w)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(calls):
            fn(x, weights[i % len(weights)])
    us = replay_time_ms(g, 10) * 1e3 / calls
    del g
    return us
