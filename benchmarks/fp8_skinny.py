"""FP8 projections of 1-32 rows on the GPU: the dispatch without the skinny path against kernels/skinny_gemm.py's FP8
modes, then decode.

    python3 -m benchmarks.fp8_skinny [--sweep] [--skip-engine]

1. Kernels, Llama-3.1-8B shapes: e4m3 weights with per-row scales, bf16 x. Variants: `fp8_linear` with the skinny path
   off (its SKINNY_MAX_M is 0 until a runner sets it: the W8A16 GEMV at one row, quantize + the Triton FP8 GEMM
   above), W8A8 skinny (quantize x per token, then
   kernels/skinny_gemm.py with both operands e4m3: what FERRY_FP8_SKINNY_MAX_M turns on), the W8A8 skinny kernel
   alone on x quantized beforehand, W8A16 skinny with fp16 and with bf16 dots, and bf16 (kernels.gemv at one row,
   the bf16 skinny kernel above) for reference. Each checked against the fp32 product of its own quantization
   (W8A8 against fp8_linear_ref, W8A16 against the dequantized weight), then timed as a CUDA graph of 48 calls
   cycling through > 400 MB of weight copies. --sweep: block sizes of the W8A8 kernel at M = 1 and 16.
2. Engine: batch-1 decode of the 8B shape with --quantization fp8 (dummy weights) with FERRY_FP8_SKINNY_MAX_M=0 and
   =32, each in its own process (benchmarks.quantized_tpot's in-process decode), against bf16.
Prints the tables last."""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys

from benchmarks.graph_timing import time_graph_us

H, I, HQ, HKV, D, LAYERS = 4096, 14336, 32, 8, 128, 32
SHAPES = {"qkv": ((HQ + 2 * HKV) * D, H), "o": (H, HQ * D), "gate_up": (2 * I, H), "down": (H, I)}
MS = (1, 2, 4, 8, 16, 32)
CALLS = 48


def time_us(fn, weights, x) -> float:
    return time_graph_us(fn, weights, x, CALLS)


def variants():
    """name -> (weights kind, fn(x, w)); "fp8" weights are (e4m3 [N, K], scale [N]); "fp8q" x comes quantized."""
    import torch.nn.functional as F

    from kernels.fp8_linear import fp8_linear
    from kernels.fp8_quant import quantize_fp8_rows
    from kernels.gemv import gemv
    from kernels.skinny_gemm import skinny_gemm

    def w8a8(x, w, **cfg):
        xq, xs = quantize_fp8_rows(x)
        return skinny_gemm(xq, w[0], weight_scale=w[1], x_scale=xs, out_dtype=x.dtype, **cfg)

    return {
        "fp8_linear, skinny off": ("fp8", lambda x, w: fp8_linear(x, w[0], w[1])),
        "W8A8 skinny": ("fp8", w8a8),
        "W8A8 kernel alone": ("fp8q", lambda xq, w: skinny_gemm(xq[0], w[0], weight_scale=w[1], x_scale=xq[1],
                                                                out_dtype=xq[2])),
        "W8A16 skinny f16": ("fp8", lambda x, w: skinny_gemm(x, w[0], weight_scale=w[1], dot_f16=True)),
        "W8A16 skinny bf16": ("fp8", lambda x, w: skinny_gemm(x, w[0], weight_scale=w[1])),
        "bf16": ("bf16", lambda x, w: gemv(x, w) if x.shape[0] == 1 else
                 (skinny_gemm(x, w) if x.shape[0] <= 32 else F.linear(x, w))),
    }


def kernels(sweep: bool) -> list[dict]:
    import torch

    from kernels.fp8_linear import fp8_linear_ref, quantize_fp8_per_channel
    from kernels.fp8_quant import quantize_fp8_rows
    from kernels.skinny_gemm import skinny_gemm

    torch.manual_seed(0)
    grid = [dict(block_n=bn, block_k=bk, num_stages=st, split_k=sk, num_warps=4)
            for bn, bk, st, sk in itertools.product([64, 128], [128, 256, 512], [3, 4, 5], [1, 2])]
    rows, ok = [], True
    for name, (N, K) in SHAPES.items():
        base = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
        copies = max(2, int(400 // (N * K / 1e6)) + 1)
        fp8 = [quantize_fp8_per_channel(base * (1 + 0.01 * i)) for i in range(copies)]
        bf16 = [base * (1 + 0.01 * i) for i in range(max(2, copies // 2))]
        for m in MS:
            x = torch.randn(m, K, device="cuda", dtype=torch.bfloat16)
            xq, xs = quantize_fp8_rows(x)
            w8, s8 = fp8[0]
            dense = x.float() @ (w8.float() * s8[:, None]).t()
            row = dict(shape=name, M=m, N=N, K=K, fp8_MB=N * K / 1e6)
            for vname, (kind, fn) in variants().items():
                arg = (xq, xs, x.dtype) if kind == "fp8q" else x
                wts = bf16 if kind == "bf16" else fp8
                out = fn(arg, wts[0]).float()
                w8a8 = vname.startswith("W8A8") or (vname == "fp8_linear, skinny off" and m > 1)  # x quantized
                ref = (x.float() @ wts[0].float().t() if kind == "bf16" else
                       fp8_linear_ref(x, w8, s8).float() if w8a8 else dense)
                err = ((out - ref).norm() / ref.norm()).item()
                ok &= err < 1e-2
                row[vname] = time_us(fn, wts, arg)
                row[vname + " err"] = err
            if sweep and m in (1, 16):
                best = None
                for cfg in grid:
                    fn = (lambda xq, w, cfg=cfg: skinny_gemm(xq[0], w[0], weight_scale=w[1], x_scale=xq[1],
                                                             out_dtype=xq[2], **cfg))
                    try:
                        us = time_us(fn, fp8, (xq, xs, x.dtype))
                    except Exception as e:  # out of resources
                        print(f"  {name} M={m} {cfg}: {type(e).__name__}", flush=True)
                        continue
                    if best is None or us < best[0]:
                        best = (us, cfg)
                row["W8A8 kernel best"], row["best_cfg"] = best
            if sweep and m == 1:
                best = None
                for cfg in grid:
                    fn = (lambda x, w, cfg=cfg: skinny_gemm(x, w[0], weight_scale=w[1], dot_f16=True, **cfg))
                    try:
                        us = time_us(fn, fp8, x)
                    except Exception as e:  # out of resources
                        print(f"  {name} M={m} W8A16 {cfg}: {type(e).__name__}", flush=True)
                        continue
                    if best is None or us < best[0]:
                        best = (us, cfg)
                print(f"  {name} M=1 W8A16 f16 best {best[0]:.1f} {best[1]}", flush=True)
                row["W8A16 f16 best"], row["w8a16_best_cfg"] = best
            rows.append(row)
            print(f"{name:8} M={m:2} " + "  ".join(f"{k} {row[k]:.1f}" for k in variants()) +
                  (f"  best {row['W8A8 kernel best']:.1f} {row['best_cfg']}" if "best_cfg" in row else ""), flush=True)
        del fp8, bf16
        torch.cuda.empty_cache()
    print("kernel checks", "ok" if ok else "FAILED", flush=True)
    return rows


def fused_checks() -> bool:
    """The kernels that hand the projections e4m3 rows, against the two kernels they replace, bit for bit."""
    import torch

    from kernels import rms_norm, silu_and_mul
    from kernels.fp8_linear import fp8_linear, quantize_fp8_per_channel
    from kernels.fp8_quant import quantize_fp8_rows
    from kernels.fp8_silu_quant import silu_and_mul_quant_fp8
    from kernels.rmsnorm import rms_norm_fp8

    torch.manual_seed(0)
    ok = True
    w = torch.rand(H, device="cuda", dtype=torch.bfloat16) + 0.5
    wq = quantize_fp8_per_channel(torch.randn(2 * I, H, device="cuda", dtype=torch.bfloat16) * 0.02)
    for m in (1, 7, 32, 300):
        x = torch.randn(m, H, device="cuda", dtype=torch.bfloat16) * 3
        r = torch.randn(m, H, device="cuda", dtype=torch.bfloat16)
        for res in (None, r):
            fused, plain = rms_norm_fp8(x, w, 1e-5, res), rms_norm(x, w, 1e-5, res)
            act, out = (fused, plain) if res is None else (fused[0], plain[0])
            q2, s2 = quantize_fp8_rows(out)
            same = torch.equal(act.scale, s2) and torch.equal(act.q.view(torch.uint8), q2.view(torch.uint8))
            same &= res is None or torch.equal(fused[1], plain[1])
            ok &= same
            print(f"rms_norm_fp8 M={m} residual={res is not None}: {'same' if same else 'DIFFERENT'}", flush=True)
            y_act = fp8_linear(act, *wq)
            y_ref = fp8_linear(out, *wq) if m > 1 else None
            if y_ref is not None:
                same = torch.equal(y_act, y_ref)
                ok &= same
                print(f"  fp8_linear(Fp8Activation) M={m}: {'same' if same else 'DIFFERENT'} as on x", flush=True)
        g = torch.randn(m, 2 * I, device="cuda", dtype=torch.bfloat16) * 3
        q, sc = silu_and_mul_quant_fp8(g)
        q2, s2 = quantize_fp8_rows(silu_and_mul(g))
        same = torch.equal(sc, s2) and torch.equal(q.view(torch.uint8), q2.view(torch.uint8))
        ok &= same
        print(f"silu_and_mul_quant_fp8 M={m}: {'same' if same else 'DIFFERENT'}", flush=True)
    print("fused checks", "ok" if ok else "FAILED", flush=True)
    return ok


def engine() -> dict:
    res = {}
    for label, env in (("bf16", {}), ("fp8 skinny off", {"FERRY_FP8_SKINNY_MAX_M": "0"}),
                       ("fp8 W8A8 skinny", {"FERRY_FP8_SKINNY_MAX_M": "32"})):
        scheme = "none" if label == "bf16" else "fp8"
        p = subprocess.run([sys.executable, "-m", "benchmarks.quantized_tpot", "--schemes", scheme],
                           env=dict(os.environ, **env), capture_output=True, text=True, timeout=300)
        res[label] = p.stdout[-1500:]
        print(f"== engine {label}\n{p.stdout[-800:]}{p.stderr[-800:] if p.returncode else ''}", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--skip-engine", action="store_true")
    ap.add_argument("--fused-only", action="store_true", help="only the fused quantization checks")
    args = ap.parse_args()
    if not fused_checks() or args.fused_only:
        return
    rows = kernels(args.sweep)
    eng = {} if args.skip_engine else engine()
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "fp8_skinny.json"), "w") as fh:
            json.dump(dict(kernels=rows, engine=eng), fh, indent=1)
    names = list(variants())
    print("\nmicroseconds per call (fp8 TB/s of the W8A8 skinny in brackets)")
    print("| shape | M | " + " | ".join(names) + " | W8A8 kernel best |")
    print("| --- | ---: |" + " ---: |" * (len(names) + 1))
    for r in rows:
        cells = " | ".join(f"{r[n]:.1f}" for n in names)
        print(f"| {r['shape']} | {r['M']} | {cells} ({r['fp8_MB'] / r['W8A8 skinny']:.2f}) | "
              f"{r.get('W8A8 kernel best', float('nan')):.1f} |")
    print("\nper decode step, the 32 layers' four projections, ms:")
    print("| M | " + " | ".join(names) + " |")
    print("| ---: |" + " ---: |" * len(names))
    for m in MS:
        by = [r for r in rows if r["M"] == m]
        print(f"| {m} | " + " | ".join(f"{sum(r[n] for r in by) * LAYERS / 1e3:.3f}" for n in names) + " |")


if __name__ == "__main__":
    main()
