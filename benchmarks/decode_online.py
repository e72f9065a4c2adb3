"""Decode attention at the batches and contexts of online serving (8-64 sequences of 300-1200 tokens), on a GPU:

    python3 -m benchmarks.decode_online

The kernel's defaults were tuned at 64 x 2048 and 1 x 32768 (docs/perf-kernels.md); a busy online server decodes
16-32 sequences of a few hundred tokens, where one split per (sequence, kv head) leaves each SM two programs that
walk their context one block after another. For each point: the default split count as a decode CUDA graph
captures it (max_context_len = 4096), then a grid of split counts and block sizes. Each variant runs as a CUDA
graph of 32 calls cycling through 8 caches (> L2, as the 32 layers' caches are), checked against the reference.
Prints a table last: the default, the best, and the split rule's choice for each point."""
from __future__ import annotations

import itertools
import json
import os

import numpy as np
import torch

from benchmarks.kernels import HKV, HQ, D, paged_cache
from engine.cuda_graphs import replay_time_ms
from kernels import decode_attention
from kernels.decode_attention import paged_decode_attention, paged_decode_attention_ref

# (batch, context); "ragged" draws `n` contexts from a sharegpt-synth-like spread (prompt + output so far)
POINTS = [(1, 300), (1, 4000), (16, 400), (32, 400), (16, 1200), (32, 800), (64, 2048)] + \
    [("ragged", n) for n in (4, 8, 16, 32, 64, 128)]
CALLS, CACHES = 32, 8


def make_point(b, ctx):
    if b == "ragged":  # sharegpt-synth-like contexts: prompt + output so far
        rng = np.random.default_rng(0)
        lens = np.clip(np.round(rng.lognormal(5.6, 0.8, ctx)), 16, 3000).astype(int).tolist()
    else:
        lens = [ctx] * b
    caches = [paged_cache(lens, torch.bfloat16) for _ in range(CACHES)]
    q = torch.randn(len(lens), HQ, D, device="cuda", dtype=torch.bfloat16)
    return lens, caches, q


def time_us(caches, q, **kw) -> float:
    out = torch.empty_like(q)
    for kc, vc, bt, cl in caches:
        paged_decode_attention(q, kc, vc, bt, cl, D ** -0.5, max_context_len=4096, out=out, **kw)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(CALLS):
            kc, vc, bt, cl = caches[i % CACHES]
            paged_decode_attention(q, kc, vc, bt, cl, D ** -0.5, max_context_len=4096, out=out, **kw)
    us = replay_time_ms(g, 20) * 1e3 / CALLS
    del g
    return us


def check(caches, q, **kw) -> float:
    kc, vc, bt, cl = caches[0]
    out = paged_decode_attention(q, kc, vc, bt, cl, D ** -0.5, max_context_len=4096, **kw).float()
    ref = paged_decode_attention_ref(q.float(), kc.float(), vc.float(), bt, cl, D ** -0.5).float()
    return ((out - ref).norm() / ref.norm()).item()


def main():
    torch.manual_seed(0)
    grid = [dict(num_splits=s, block_n=bn, num_warps=nw, num_stages=st)
            for s, bn, nw, st in itertools.product([1, 2, 4, 8, 16, 32], [32, 64, 128], [4], [2, 3])]
    table, worst_err, dump = [], 0.0, []
    for b, ctx in POINTS:
        lens, caches, q = make_point(b, ctx)
        nbytes = 2 * sum(lens) * HKV * D * 2
        default_splits = decode_attention.choose_num_splits(len(lens), HKV, 4096, q.device, decode_attention.DEFAULTS)
        base = time_us(caches, q)
        worst_err = max(worst_err, check(caches, q))
        best, every = (base, "default"), []
        for cfg in grid:
            try:
                us = time_us(caches, q, **cfg)
            except Exception as e:  # out of resources
                print(f"  skip {cfg}: {type(e).__name__}", flush=True)
                continue
            worst_err = max(worst_err, check(caches, q, **cfg))
            every.append(dict(cfg, us=us))
            if us < best[0]:
                best = (us, cfg)
        name = f"B={len(lens)} ctx={ctx if b != 'ragged' else 'ragged mean %d' % (sum(lens) // len(lens))}"
        print(f"{name}: default ({default_splits} splits) {base:.1f} us ({nbytes / base / 1e6:.2f} TB/s), "
              f"best {best[0]:.1f} us {best[1]}", flush=True)
        table.append((name, default_splits, base, best, nbytes))
        dump.append(dict(point=name, lens=lens, default_splits=default_splits, default_us=base, grid=every))
        del caches
        torch.cuda.empty_cache()
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "decode_online.json"), "w") as fh:
            json.dump(dump, fh)
    print(f"\nworst relative error against the reference: {worst_err:.1e}")
    print("| point | default splits | default us | TB/s | best us | TB/s | best config |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, ds, base, (bus, cfg), nbytes in table:
        print(f"| {name} | {ds} | {base:.1f} | {nbytes / base / 1e6:.2f} | {bus:.1f} | {nbytes / bus / 1e6:.2f} "
              f"| {cfg} |")


if __name__ == "__main__":
    main()
