"""W4A16 projections from 2 to 4096 rows on one GPU: the tensor-core GEMM (kernels/w4a16_gemm.py) in several tile
configurations, the GEMV, and dequantize + cuBLAS, against bf16: where kernels/w4a16.py's bounds and the GEMM's
config table come from.

`python -m benchmarks.w4a16_gemm [--ms 2,8,...]` (from the repository root; one H200, about 90 s).

1. Checks, at each shape and M: the GEMM at its table's config against F.linear with the bf16 dequantized
   weight (what the dense path computes): relative norm error, limit 1e-2.
2. Timings (benchmarks.quant_kernels.time_us: a CUDA graph of calls cycling through > 400 MB of weight copies,
   median of replays) at the Llama-3.1-8B shapes: bf16 F.linear; "dispatch" (w4a16_linear as the tree has it);
   "dense" (dequantize + cuBLAS; from 256 rows also "dense <block_n/block_b/warps>" of the dequantizing kernel);
   "gemv" (up to 8 rows); "gemm <block_m/block_n/warps/stages>" each.
3. A table of the 32-layer sum of the four projections per step at each M, in ms: which path is fastest where.
Writes w4a16_gemm.json under $OUT when that is set.
"""
import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

from benchmarks.quant_kernels import GROUP, LAYERS, SHAPES, copy_bandwidth, make_w4, time_us
from kernels.w4a16 import w4a16_linear
from kernels.w4a16_dequant import w4a16_dequantize_dense
from kernels.w4a16_gemm import CONFIGS, w4a16_gemm
from kernels.w4a16_gemv import w4a16_gemv

GEMM = [cfg for _, cfg in CONFIGS] + [dict(block_m=bm, block_n=bn, num_warps=nw, num_stages=ns) for bm, bn, nw, ns in
                                      [(16, 128, 8, 4), (64, 64, 4, 4), (64, 128, 8, 3), (128, 64, 4, 3),
                                       (128, 128, 8, 2)]]
DENSE = [dict(block_n=bn, block_b=bb, num_warps=nw) for bn, bb, nw in
         [(8, 8, 4), (32, 2, 4), (16, 8, 8), (32, 4, 8), (64, 1, 4)]]  # besides kernels.w4a16_dequant.DEFAULTS


def _name(path: str, cfg: dict) -> str:
    return f"{path} " + "/".join(str(v) for v in cfg.values())


def variants(M: int) -> dict:
    out = {"bf16": ("bf16", lambda x, w: F.linear(x, w)),
           "dispatch": ("w4", lambda x, t: w4a16_linear(x, t, GROUP)),
           "dense": ("w4", lambda x, t: F.linear(x, w4a16_dequantize_dense(t, GROUP, x.dtype)))}
    if M <= 8:
        out["gemv"] = ("w4", lambda x, t: w4a16_gemv(x, t, GROUP))
    if M >= 256:
        for cfg in DENSE:
            out[_name("dense", cfg)] = ("w4", lambda x, t, cfg=cfg:
                                        F.linear(x, w4a16_dequantize_dense(t, GROUP, x.dtype, **cfg)))
    for cfg in GEMM:
        out[_name("gemm", cfg)] = ("w4", lambda x, t, cfg=cfg: w4a16_gemm(x, t, GROUP, **cfg))
    return out


def check(t, K, M) -> float:
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    ref = F.linear(x, w4a16_dequantize_dense(t, GROUP, torch.bfloat16)).float()
    out = w4a16_gemm(x, t, GROUP).float()
    return ((out - ref).norm() / ref.norm()).item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="2,8,16,32,64,128,256,1024,4096")
    ms = [int(m) for m in ap.parse_args().ms.split(",")]
    t0 = time.time()
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  triton {__import__('triton').__version__}  "
          f"copy {copy_bandwidth():.2f} TB/s", flush=True)
    ok, errs = True, {}
    for name, (N, K) in SHAPES.items():
        t = make_w4(N, K, 0)
        for M in ms:
            e = check(t, K, M)
            errs[f"{name} {M}"] = e
            ok &= e < 1e-2
    print("checks (the GEMM at its table's config vs the bf16 dense dequantized weight): "
          + ("all ok" if ok else "FAILED") + f", worst {max(errs.values()):.2e}", flush=True)
    us: dict = {}
    for name, (N, K) in SHAPES.items():
        bf_mb, w4_mb = N * K * 2 / 1e6, N * K * 0.5 / 1e6
        sets = {"bf16": [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
                         for _ in range(max(2, int(400 // bf_mb) + 1))],
                "w4": [make_w4(N, K, s) for s in range(max(2, int(400 // w4_mb) + 1))]}
        for M in ms:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            calls = 16 if M <= 1024 else 6
            row = us.setdefault(f"{name} {M}", {})
            for vname, (kind, fn) in variants(M).items():
                try:
                    row[vname] = time_us(fn, sets[kind], x, calls)
                except Exception as e:  # a config over the shared memory: report, go on
                    print(f"  {name} M={M} {vname}: {type(e).__name__}: {str(e)[:120]}", flush=True)
            print(f"{name:8} M={M:5}  " + "  ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)
        del sets
        torch.cuda.empty_cache()
    names = list(dict.fromkeys(list(variants(1)) + list(variants(4096))))
    print("\n32-layer sum of the four projections per step, ms")
    print("| M | " + " | ".join(names) + " | dispatch / best |")
    print("|" + " ---: |" * (len(names) + 2))
    for M in ms:
        tot = {v: LAYERS * sum(us[f"{s} {M}"].get(v, float("nan")) for s in SHAPES) / 1e3 for v in names}
        fine = {v: t for v, t in tot.items() if v not in ("bf16", "dispatch") and t == t}
        best = min(fine, key=fine.get)
        cells = " | ".join(f"{tot[v]:.2f}" for v in names)
        ratio = f"{tot['dispatch'] / fine[best]:.2f} ({best})"
        print(f"| {M} | {cells} | {ratio} |")
    print(f"\nchecks {'all ok' if ok else 'FAILED'}; total {time.time() - t0:.0f} s")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "w4a16_gemm.json"), "w") as fh:
            json.dump(dict(us=us, errs=errs), fh, indent=1)


if __name__ == "__main__":
    main()
