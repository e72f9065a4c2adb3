"""Batch-1 projections on the GPU: cuBLAS (F.linear, torch.mv) against kernels/gemv.py, Llama-3.1-8B shapes at
TP=1 and TP=2. `python3 -m benchmarks.gemv [--sweep]`

Every variant is timed as a CUDA graph of 48 calls that cycle through copies of the weight totalling over
512 MB, so each call reads its weight from HBM as a model's layers do (a lone 25 MB weight would sit in L2).
--sweep times a grid of block sizes, warps and stages and reports the best per shape. Writes bench_gemv.json
under $OUT when that is set.
"""
import argparse
import itertools
import json
import os

import torch
import torch.nn.functional as F

from benchmarks.graph_timing import time_graph_us
from kernels.gemv import DEFAULTS, gemv, gemv_ref

H, I, HQ, HKV, D, VOCAB = 4096, 14336, 32, 8, 128, 128256
SHAPES = {  # name: (N, K) of weight [N, K]
    "qkv tp1": ((HQ + 2 * HKV) * D, H), "o tp1": (H, HQ * D), "gate_up tp1": (2 * I, H), "down tp1": (H, I),
    "qkv tp2": ((HQ + 2 * HKV) * D // 2, H), "o tp2": (H, HQ * D // 2), "gate_up tp2": (I, H), "down tp2": (H, I // 2),
    "lm_head tp2": (VOCAB // 2, H),
}
CALLS = 48


def time_us(fn, weights, x) -> float:
    return time_graph_us(fn, weights, x, CALLS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    variants = {"F.linear (cuBLASLt)": lambda x, w: F.linear(x, w),
                "torch.mv (cuBLAS gemv)": lambda x, w: torch.mv(w, x[0]),
                "triton default": lambda x, w: gemv(x, w)}
    grid = []
    if args.sweep:
        grid = [dict(block_n=bn, block_k=bk, num_warps=nw, num_stages=ns)
                for bn, bk, nw, ns in itertools.product([1, 2, 4], [1024, 2048, 4096], [4, 8, 16], [2, 3, 4])]
    rows, ok = [], True
    for name, (N, K) in SHAPES.items():
        mb = N * K * 2 / 1e6
        copies = max(2, int(512 // mb) + 1)
        weights = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
        err = ((gemv(x, weights[0]).float() - gemv_ref(x, weights[0]).float()).norm() /
               gemv_ref(x, weights[0]).float().norm()).item()
        ok &= err < 1e-2
        row = dict(shape=name, N=N, K=K, MB=mb, rel_err=err)
        for vname, fn in variants.items():
            row[vname] = time_us(fn, weights, x)
        best = None
        for cfg in grid:
            try:
                us = time_us(lambda x, w, cfg=cfg: gemv(x, w, **cfg), weights, x)
            except Exception as e:  # out of resources for this config
                print(f"  {name} {cfg}: {type(e).__name__}", flush=True)
                continue
            if best is None or us < best[0]:
                best = (us, cfg)
        if best:
            row["triton best"], row["best_cfg"] = best
        rows.append(row)
        line = " | ".join(f"{k} {row[k]:.1f} us ({mb / row[k]:.2f} TB/s)" for k in list(variants) + ["triton best"]
                          if k in row)
        print(f"{name:12} {mb:6.1f} MB  err {err:.1e} | {line}" + (f"  best {row['best_cfg']}" if best else ""),
              flush=True)
        del weights
        torch.cuda.empty_cache()
    print(f"\ndefaults {DEFAULTS}; checks {'ok' if ok else 'FAILED'}")
    print("| shape | MB | F.linear us | torch.mv us | triton default us | triton best us | best config |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['shape']} | {r['MB']:.1f} | {r['F.linear (cuBLASLt)']:.1f} | {r['torch.mv (cuBLAS gemv)']:.1f} | "
              f"{r['triton default']:.1f} | {r.get('triton best', float('nan')):.1f} | {r.get('best_cfg', '')} |")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "bench_gemv.json"), "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
