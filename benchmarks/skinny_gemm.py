"""Projections of 2-32 rows on the GPU: cuBLAS (F.linear) against kernels/skinny_gemm.py, then whole decode steps.

    python3 -m benchmarks.skinny_gemm [--sweep] [--skip-engine]

1. Kernels, Llama-3.1-8B shapes at TP=1: each variant checked against the fp32 product, then timed as a CUDA graph
   of 48 calls cycling through > 512 MB of weight copies (each call reads its weight from HBM, as a model's layers
   do); --sweep also times a grid of block sizes at M = 4, 16 and 32 and reports the best per shape. The table sums
   the 32 layers' four projections plus the LM head per decode step.
2. Engine: the same runner (dummy 8B weights, decode CUDA graphs) with FERRY_SKINNY_GEMM_MAX_M=0 and =32, each in
   its own process; wall time of one decode step (host sync included, median of 30) at batch 1 ... 64, and whether
   the two produced the same greedy tokens.
Prints the tables last."""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

from benchmarks.graph_timing import time_graph_us

H, I, HQ, HKV, D, VOCAB, LAYERS = 4096, 14336, 32, 8, 128, 128256, 32
SHAPES = {"qkv": ((HQ + 2 * HKV) * D, H), "o": (H, HQ * D), "gate_up": (2 * I, H), "down": (H, I),
          "lm_head": (VOCAB, H)}
MS = (2, 4, 8, 16, 32)
CALLS = 48
BATCHES = (1, 2, 4, 8, 16, 32, 64)


def time_us(fn, weights, x) -> float:
    return time_graph_us(fn, weights, x, CALLS)


def kernels(sweep: bool) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from kernels.skinny_gemm import config_for, skinny_gemm

    grid = [dict(block_n=bn, block_k=bk, num_stages=ns, split_k=sk, num_warps=nw)
            for bn, bk, ns, sk, nw in itertools.product([32, 64, 128], [128, 256], [3, 5], [1, 2, 4], [4])]
    rows, ok = [], True
    torch.manual_seed(0)
    for name, (N, K) in SHAPES.items():
        mb = N * K * 2 / 1e6
        copies = max(2, int(512 // mb) + 1)
        weights = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        for m in MS:
            x = torch.randn(m, K, device="cuda", dtype=torch.bfloat16)
            ref = x.float() @ weights[0].float().t()
            err = ((skinny_gemm(x, weights[0]).float() - ref).norm() / ref.norm()).item()
            ok &= err < 1e-2
            row = dict(shape=name, M=m, N=N, K=K, MB=mb, rel_err=err, cfg=config_for(N, K),
                       cublas=time_us(lambda x, w: F.linear(x, w), weights, x),
                       skinny=time_us(lambda x, w: skinny_gemm(x, w), weights, x))
            if sweep and m in (4, 16, 32):
                best = None
                for cfg in grid:
                    try:
                        us = time_us(lambda x, w, cfg=cfg: skinny_gemm(x, w, **cfg), weights, x)
                    except Exception as e:  # out of resources for this config
                        print(f"  {name} M={m} {cfg}: {type(e).__name__}", flush=True)
                        continue
                    if best is None or us < best[0]:
                        best = (us, cfg)
                row["best"], row["best_cfg"] = best
            rows.append(row)
            print(f"{name:8} M={m:2} err {err:.1e} cuBLAS {row['cublas']:7.1f} us ({mb / row['cublas']:.2f} TB/s) "
                  f"skinny {row['skinny']:7.1f} us ({mb / row['skinny']:.2f} TB/s)"
                  + (f" best {row['best']:.1f} {row['best_cfg']}" if "best" in row else ""), flush=True)
        del weights
        torch.cuda.empty_cache()
    print("kernel checks", "ok" if ok else "FAILED")
    return rows


def engine_child(max_m: int) -> None:
    """One runner with FERRY_SKINNY_GEMM_MAX_M=max_m (set by the parent): decode step times by batch, as JSON."""
    import numpy as np
    import torch

    from engine.llm import LLM
    from shared.sampling_params import SamplingParams
    from shared.settings import Settings

    llm = LLM(Settings(load_format="dummy", hf_config="llama-3.1-8b", dtype="bfloat16", device="cuda",
                       max_model_len=4096, max_num_seqs=max(BATCHES), cuda_graph_max_tokens=0))
    rng = np.random.default_rng(0)
    vocab = llm.model_config.vocab_size
    out, tokens = {}, {}
    for b in BATCHES:
        params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
        for i in range(b):
            llm.scheduler.add_request(f"b{b}-{i}", 0, rng.integers(0, vocab, 300).tolist(), params)
        while llm.scheduler.waiting or any(s.num_output_tokens == 0 for s in llm.scheduler.running):
            llm.step()
        times = []
        for _ in range(30):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            llm.step()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
        out[b] = float(np.median(times))
        seqs = sorted(llm.scheduler.running, key=lambda s: s.request_id)
        tokens[b] = [s.token_ids[s.num_prompt_tokens:][:30] for s in seqs]
        while llm.scheduler.has_work():
            llm.step()
    print("RESULT " + json.dumps(dict(step_ms=out, tokens=tokens)), flush=True)


def engine() -> dict:
    res = {}
    for max_m in (0, 32):
        env = dict(os.environ, FERRY_SKINNY_GEMM_MAX_M=str(max_m))
        p = subprocess.run([sys.executable, "-m", "benchmarks.skinny_gemm", "--engine-child", str(max_m)], env=env,
                           capture_output=True, text=True, timeout=400)
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            print(f"engine with max_m={max_m} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}", flush=True)
            continue
        res[max_m] = json.loads(line[0][7:])
        print(f"engine max_m={max_m}: {res[max_m]['step_ms']}", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--skip-engine", action="store_true")
    ap.add_argument("--engine-child", type=int, default=None)
    args = ap.parse_args()
    if args.engine_child is not None:
        return engine_child(args.engine_child)
    rows = kernels(args.sweep)
    eng = {} if args.skip_engine else engine()
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "skinny_gemm.json"), "w") as fh:
            json.dump(dict(kernels=rows, engine=eng), fh, indent=1)
    print("\n| shape | M | cuBLAS us | skinny us | cuBLAS / skinny | best swept us | best config |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['shape']} | {r['M']} | {r['cublas']:.1f} | {r['skinny']:.1f} | {r['cublas'] / r['skinny']:.2f} | "
              f"{r.get('best', float('nan')):.1f} | {r.get('best_cfg', '')} |")
    print("\nper decode step (32 layers x 4 projections + LM head), ms:")
    print("| M | cuBLAS | skinny | best swept |")
    print("| ---: | ---: | ---: | ---: |")
    for m in MS:
        by = {r["shape"]: r for r in rows if r["M"] == m}
        tot = {k: sum(by[s][k] * (1 if s == "lm_head" else LAYERS) for s in SHAPES) / 1e3 for k in ("cublas", "skinny")}
        best = (sum(by[s].get("best", by[s]["skinny"]) * (1 if s == "lm_head" else LAYERS) for s in SHAPES) / 1e3)
        print(f"| {m} | {tot['cublas']:.3f} | {tot['skinny']:.3f} | {best:.3f} |")
    if eng:
        print("\n| batch | decode step ms, cuBLAS (max_m 0) | skinny (max_m 32) | ratio | same greedy tokens |")
        print("| ---: | ---: | ---: | ---: | --- |")
        for b in BATCHES:
            a, s = eng.get(0, {}).get("step_ms", {}), eng.get(32, {}).get("step_ms", {})
            ta, ts = eng.get(0, {}).get("tokens", {}).get(str(b)), eng.get(32, {}).get("tokens", {}).get(str(b))
            if str(b) in a and str(b) in s:
                print(f"| {b} | {a[str(b)]:.3f} | {s[str(b)]:.3f} | {a[str(b)] / s[str(b)]:.3f} | "
                      f"{'yes' if ta == ts else 'no'} |")


if __name__ == "__main__":
    main()
