"""Quantized projections on one GPU: checks, then bf16 against W4A16 and FP8 at the Llama-3.1-8B shapes.

`python -m benchmarks.quant_kernels [--quick]` (from the repository root; one H200, a few minutes).

1. Checks: every kernel against its torch reference at the 8B shapes (max abs error and relative norm error):
   the W4A16 GEMV and GEMM (asymmetric, group 128), the FP8 per-token quantization (bits equal to the
   reference's), the W8A16 GEMV, W8A8 through torch._scaled_mm and through the Triton GEMM, and the dispatching
   w4a16_linear / fp8_linear.
2. Timings at M = 1, 2, 4, 16, 64, 256, 1024, 4096: bf16 (kernels.gemv at M = 1, F.linear otherwise), W4A16
   (GEMV block variants, the GEMM table, the dispatch), FP8 (GEMV variants; per-token quantization plus
   _scaled_mm with and without fast accumulation, or plus the Triton GEMM; the dispatch). Each variant is a CUDA
   graph of many calls cycling through copies of the weight that total over 400 MB (so each call reads its
   weight from HBM, as a model's layers do), replayed after a warm-up; the median of several replays.
3. A table: microseconds per call, speedups over bf16, GB/s of weight read at M = 1, and the 32-layer
   sum of the four projections at M = 1 (what the decode step's linear layers cost per token).
4. Last, the GEMV variants side by side at M = 1, 2, 4, 8: bf16, W4A16 fp32 (kernels/w4a16_gemv.py) and packed
   (kernels/w4a16_gemv_packed.py), FP8 tile (kernels/fp8_gemv.py) and wide (kernels/fp8_gemv_wide.py): the best
   block configuration of each, microseconds and TB/s of weight bytes.
--quick: only M = 1, 2, 4, 8, the GEMV variants (two block configurations each) and the dispatch, GEMV checks
only (one H200 call, about a minute).
Writes quant_kernels.json under $OUT when that is set.
"""
import argparse
import importlib
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from kernels.activation import silu_and_mul
from kernels.fp8_gemm import fp8_gemm
from kernels.fp8_gemv import fp8_gemv
from kernels.fp8_linear import (
    fp8_gemm_w8a8,
    fp8_linear,
    fp8_linear_ref,
    quantize_fp8_per_channel,
    quantize_fp8_per_token_ref,
)
from kernels.fp8_quant import quantize_fp8_rows
from kernels.fp8_silu_quant import silu_and_mul_quant_fp8
from kernels.gemv import gemv
from kernels.w4a16 import pack_w4a16, w4a16_dequantize, w4a16_linear
from kernels.w4a16_dequant import w4a16_dequantize_dense
from kernels.w4a16_gemm import config_for as w4_config_for
from kernels.w4a16_gemm import w4a16_gemm
from kernels.w4a16_gemv import w4a16_gemv

fp8mod = importlib.import_module("kernels.fp8_linear")  # the module (kernels/__init__ exports its function)
w4mod = importlib.import_module("kernels.w4a16")

H, I, HQ, HKV, D = 4096, 14336, 32, 8, 128
SHAPES = {"qkv": ((HQ + 2 * HKV) * D, H), "o": (H, HQ * D), "gate_up": (2 * I, H), "down": (H, I)}
MS = [1, 2, 4, 8, 16, 64, 256, 1024, 4096]
CHECK_MS = (16, 256, 4096)  # the GEMM checks; the GEMVs are checked at 1, 2 and 4
GROUP = 128
DEVICE = "cuda"  # --smoke: "cpu", tiny shapes, the Triton interpreter (checks the script itself, no GPU needed)
LAYERS = 32
W4_GEMV_PACKED = [dict(block_n=bn, block_b=bb, num_warps=nw, num_stages=ns) for bn, bb, nw, ns in
                  [(8, 16, 4, 2), (8, 8, 2, 2), (16, 16, 8, 2), (4, 16, 2, 2), (8, 32, 8, 2), (16, 8, 4, 2)]]
FP8_GEMV_WIDE = [dict(block_n=bn, block_w=bw, num_warps=nw, num_stages=ns) for bn, bw, nw, ns in
                 [(8, 512, 4, 1), (16, 512, 4, 1), (4, 512, 4, 1), (8, 1024, 4, 1), (8, 256, 2, 1)]]
GEMV_MS = (1, 2, 4, 8)  # the rows at which the GEMVs are timed (they serve 1 today; the table says whether more)
W4_GEMV = [dict(block_n=bn, block_b=bb, num_warps=nw, num_stages=ns, prefetch=pf) for bn, bb, nw, ns, pf in
           [(8, 8, 4, 2, True), (8, 8, 4, 2, False), (8, 8, 2, 2, True), (16, 16, 8, 2, True), (8, 16, 8, 3, True),
            (4, 16, 8, 3, True), (16, 8, 8, 2, True), (8, 8, 8, 2, True)]]
FP8_GEMV = [dict(block_n=bn, block_k=bk, num_warps=nw, num_stages=ns, prefetch=pf) for bn, bk, nw, ns, pf in
            [(4, 2048, 8, 3, False), (4, 2048, 8, 3, True), (8, 1024, 4, 2, True), (8, 2048, 8, 2, False),
             (4, 2048, 4, 1, True), (16, 512, 4, 2, False), (8, 1024, 4, 2, False)]]
W4_GEMM_ALT = {16: [dict(block_m=16, block_n=128, num_warps=8, num_stages=4),
                    dict(block_m=32, block_n=64, num_warps=4, num_stages=4),
                    dict(block_m=16, block_n=64, num_warps=4, num_stages=4, split_k=1)],
               64: [dict(block_m=64, block_n=64, num_warps=4, num_stages=4),
                    dict(block_m=64, block_n=128, num_warps=8, num_stages=3)],
               4096: [dict(block_m=128, block_n=128, num_warps=8, num_stages=2)]}
FP8_GEMM_ALT = [dict(block_m=128, block_n=256, block_k=128, num_warps=8, num_stages=3),
                dict(block_m=64, block_n=128, block_k=128, num_warps=4, num_stages=4)]


def _cfg_name(cfg: dict) -> str:
    return "/".join(str(v) for v in cfg.values())


def time_us(fn, weights, x, calls: int, reps: int = 7) -> float:
    """Median microseconds per call of a CUDA graph of `calls` calls cycling through `weights`."""
    if DEVICE == "cpu":
        t0 = time.perf_counter()
        fn(x, weights[0])
        return (time.perf_counter() - t0) * 1e6
    for w in weights[:2]:
        fn(x, w)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(calls):
            fn(x, weights[i % len(weights)])
    for _ in range(2):
        g.replay()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    del g
    return statistics.median(times)


def copy_bandwidth() -> float:
    """TB/s of a 1 GiB fp32 copy (20 back to back, eager), counting bytes read plus bytes written."""
    n = 2**28 if DEVICE == "cuda" else 2**20
    src, dst = torch.empty(n, device=DEVICE), torch.empty(n, device=DEVICE)
    if DEVICE == "cpu":
        return float("nan")
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        dst.copy_(src)
    end.record()
    end.synchronize()
    return 2 * n * 4 * 20 / (start.elapsed_time(end) * 1e-3) / 1e12


def _errs(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    d = (out.float() - ref.float())
    return d.abs().max().item(), (d.norm() / ref.float().norm().clamp(min=1e-30)).item()


def make_w4(N, K, seed):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    q = torch.randint(0, 16, (N, K), device=DEVICE, generator=g, dtype=torch.int32)
    scales = torch.rand(N, K // GROUP, device=DEVICE, generator=g) * 0.004 + 0.001
    zeros = torch.randint(0, 16, (N, K // GROUP), device=DEVICE, generator=g, dtype=torch.int32)
    return pack_w4a16(q, scales, zeros, GROUP, torch.bfloat16)


def make_fp8(N, K, seed):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    return quantize_fp8_per_channel(torch.randn(N, K, device=DEVICE, generator=g) * 0.02)


def check(name, N, K, results, ok):
    """Every kernel against its reference at this shape; appends lines to results, returns whether all held."""
    torch.manual_seed(0)
    t = make_w4(N, K, 0)
    w_deq = w4a16_dequantize(t, GROUP)
    w8, ws = make_fp8(N, K, 1)
    w8_deq = w8.float() * ws[:, None]
    lines = []

    def note(what, out, ref, limit):
        nonlocal ok
        mx, rel = _errs(out, ref)
        good = rel < limit
        ok &= good
        lines.append(f"  {name:8} {what:34} max abs {mx:.3e}  rel {rel:.2e}  {'ok' if good else 'FAIL'}")

    for M in (1, 2, 4, 8):
        x = torch.randn(M, K, device=DEVICE, dtype=torch.bfloat16)
        note(f"w4a16 gemv M={M}", w4a16_gemv(x, t, GROUP, variant="fp32"), x.float() @ w_deq.t(), 1e-2)
        for cfg in W4_GEMV_PACKED[:2]:
            note(f"w4a16 gemv packed {_cfg_name(cfg)} M={M}", w4a16_gemv(x, t, GROUP, variant="packed", **cfg),
                 x.float() @ w_deq.t(), 1e-2)
        note(f"fp8 gemv (W8A16) M={M}", fp8_gemv(x, w8, ws, variant="tile"), x.float() @ w8_deq.t(), 1e-2)
        for cfg in FP8_GEMV_WIDE[:2]:
            note(f"fp8 gemv wide {_cfg_name(cfg)} M={M}", fp8_gemv(x, w8, ws, variant="wide", **cfg),
                 x.float() @ w8_deq.t(), 1e-2)
    for M in CHECK_MS:
        x = torch.randn(M, K, device=DEVICE, dtype=torch.bfloat16)
        ref4 = x.float() @ w_deq.t()
        note(f"w4a16 gemm M={M}", w4a16_gemm(x, t, GROUP), ref4, 1e-2)
        note(f"w4a16_linear M={M}", w4a16_linear(x, t, GROUP), ref4, 1e-2)
        note(f"w4 dequant dense M={M}", w4a16_dequantize_dense(t, GROUP, torch.bfloat16), w_deq, 1e-2)
        xq, xs = quantize_fp8_rows(x)
        xqr, xsr = quantize_fp8_per_token_ref(x)
        same = (xq.view(torch.uint8) == xqr.view(torch.uint8)).float().mean().item()
        scale_ok = torch.equal(xs, xsr)
        ok &= same > 0.999 and scale_ok
        lines.append(f"  {name:8} {'fp8 quant M=' + str(M):34} values equal {same * 100:.3f}%  scales equal "
                     f"{scale_ok}  {'ok' if same > 0.999 and scale_ok else 'FAIL'}")
        ref8 = fp8_linear_ref(x, w8, ws)
        note(f"fp8 scaled_mm M={M}", fp8_gemm_w8a8(x, w8, ws, backend="scaled_mm"), ref8, 1e-2)
        note(f"fp8 triton gemm M={M}", fp8_gemm(xq, w8, xs, ws, None, torch.bfloat16), ref8, 1e-2)
        note(f"fp8_linear M={M}", fp8_linear(x, w8, ws), ref8, 1e-2)
        note(f"fp8 W8A8 vs dense M={M}", ref8, x.float() @ w8_deq.t(), 5e-2)
        if name == "down":  # the down projection's input comes from silu_and_mul: the fused quantization
            x2 = torch.randn(M, 2 * K, device=DEVICE, dtype=torch.bfloat16)
            q1, s1 = silu_and_mul_quant_fp8(x2)
            q2, s2 = quantize_fp8_rows(silu_and_mul(x2))
            good = torch.equal(s1, s2) and torch.equal(q1.view(torch.uint8), q2.view(torch.uint8))
            ok &= good
            lines.append(f"  {name:8} {'silu_and_mul_quant_fp8 M=' + str(M):34} equal to the two kernels: {good}  "
                         f"{'ok' if good else 'FAIL'}")
    results.extend(lines)
    print("\n".join(lines), flush=True)
    return ok


def gemv_variants(M, quick):
    """The GEMVs, old and new: name -> (kind, fn(x, weight)); names start with the table's column prefixes."""
    v = {}
    for cfg in W4_GEMV[:2] if quick else W4_GEMV:
        v[f"w4 gemv {_cfg_name(cfg)}"] = ("w4", lambda x, t, cfg=cfg: w4a16_gemv(x, t, GROUP, variant="fp32", **cfg))
    for cfg in W4_GEMV_PACKED[:2] if quick else W4_GEMV_PACKED:
        v[f"w4 packed {_cfg_name(cfg)}"] = ("w4", lambda x, t, cfg=cfg: w4a16_gemv(x, t, GROUP, variant="packed",
                                                                                  **cfg))
    for cfg in FP8_GEMV[:2] if quick else FP8_GEMV:
        v[f"fp8 gemv {_cfg_name(cfg)}"] = ("fp8", lambda x, w, cfg=cfg: fp8_gemv(x, w[0], w[1], variant="tile",
                                                                                 **cfg))
    for cfg in FP8_GEMV_WIDE[:2] if quick else FP8_GEMV_WIDE:
        v[f"fp8 wide {_cfg_name(cfg)}"] = ("fp8", lambda x, w, cfg=cfg: fp8_gemv(x, w[0], w[1], variant="wide",
                                                                                 **cfg))
    return v


def variants(M, quick):
    """name -> (kind, fn(x, weight)) for this M; kind picks the weight set (bf16, w4, fp8)."""
    v = {"bf16": ("bf16", (lambda x, w: gemv(x, w)) if M == 1 else (lambda x, w: F.linear(x, w)))}
    if quick:  # the GEMVs and the dispatch only
        v.update(gemv_variants(M, quick))
        v["w4a16_linear"] = ("w4", lambda x, t: w4a16_linear(x, t, GROUP))
        v["fp8_linear"] = ("fp8", lambda x, w: fp8_linear(x, w[0], w[1]))
        return v
    if M <= 8:
        v.update(gemv_variants(M, quick))
    v[f"w4 gemm {_cfg_name(w4_config_for(M))}"] = ("w4", lambda x, t: w4a16_gemm(x, t, GROUP))
    alts = W4_GEMM_ALT.get(16 if M <= 16 else (64 if M <= 64 else 4096), [])
    for cfg in alts[:1] if quick and M <= 16 else ([] if quick else alts):
        v[f"w4 gemm {_cfg_name(cfg)}"] = ("w4", lambda x, t, cfg=cfg: w4a16_gemm(x, t, GROUP, **cfg))
    if M >= 16:
        v["w4 dequant+F.linear"] = ("w4", lambda x, t: F.linear(x, w4a16_dequantize_dense(t, GROUP, x.dtype)))
    v["w4a16_linear"] = ("w4", lambda x, t: w4a16_linear(x, t, GROUP))
    v["fp8 quant+scaled_mm"] = ("fp8", lambda x, w: fp8_gemm_w8a8(x, w[0], w[1], backend="scaled_mm"))
    v["fp8 quant+scaled_mm exact"] = ("fp8", lambda x, w: _scaled_mm_exact(x, w))
    v["fp8 quant+triton"] = ("fp8", lambda x, w: fp8_gemm_w8a8(x, w[0], w[1], backend="triton"))
    if not quick and M >= 16:
        for cfg in FP8_GEMM_ALT:
            v[f"fp8 quant+triton {_cfg_name(cfg)}"] = ("fp8", lambda x, w, cfg=cfg: _quant_gemm(x, w, cfg))
        v["quantize only (fp8)"] = ("fp8", lambda x, w: quantize_fp8_rows(x))
    v["fp8_linear"] = ("fp8", lambda x, w: fp8_linear(x, w[0], w[1]))
    return v


def _quant_gemm(x, w, cfg):
    xq, xs = quantize_fp8_rows(x)
    return fp8_gemm(xq, w[0], xs, w[1], None, torch.bfloat16, **cfg)


def _scaled_mm_exact(x, w):
    old = fp8mod.FAST_ACCUM
    fp8mod.FAST_ACCUM = False
    try:
        return fp8_gemm_w8a8(x, w[0], w[1], backend="scaled_mm")
    finally:
        fp8mod.FAST_ACCUM = old


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer block-size variants")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, interpreter: tries the script only")
    args = ap.parse_args()
    global DEVICE, SHAPES, MS, CHECK_MS
    if args.quick:
        MS, CHECK_MS = list(GEMV_MS), ()
    if args.smoke:
        DEVICE, MS, CHECK_MS = "cpu", [1, 2, 16] if not args.quick else [1, 2], () if args.quick else (16,)
        SHAPES = {"qkv": (48, 256), "down": (32, 512)}
    t_start = time.time()
    print(f"{torch.cuda.get_device_name() if DEVICE == 'cuda' else 'cpu'}  torch {torch.__version__}  "
          f"triton {__import__('triton').__version__}  w4a16 GEMV_MAX_M {w4mod.GEMV_MAX_M}  "
          f"fp8 GEMV_MAX_M {fp8mod.GEMV_MAX_M} backend {fp8mod.GEMM_BACKEND}", flush=True)
    copy_tbs = copy_bandwidth()
    print(f"copy bandwidth (read + write): {copy_tbs:.2f} TB/s", flush=True)
    ok = True
    checks: list[str] = []
    if not args.no_check:
        print("\nchecks (relative error = ||out - ref|| / ||ref||; limit 1e-2)", flush=True)
        for name, (N, K) in SHAPES.items():
            try:
                ok = check(name, N, K, checks, ok)
            except Exception as e:  # report and go on to the timings
                ok = False
                checks.append(f"  {name}: {type(e).__name__}: {e}")
                print(checks[-1], flush=True)
        print(f"checks {'all ok' if ok else 'FAILED'}  ({time.time() - t_start:.0f} s)", flush=True)
    rows = []
    for name, (N, K) in SHAPES.items():
        bf_mb, w4_mb, fp8_mb = N * K * 2 / 1e6, (N * K / 2 + N * K // GROUP * 4) / 1e6, (N * K + N * 4) / 1e6
        sets = {"bf16": [torch.randn(N, K, device=DEVICE, dtype=torch.bfloat16) * 0.02
                         for _ in range(max(2, int(400 // bf_mb) + 1))],
                "w4": [make_w4(N, K, s) for s in range(max(2, int(400 // w4_mb) + 1))],
                "fp8": [make_fp8(N, K, s) for s in range(max(2, int(400 // fp8_mb) + 1))]}
        mbs = {"bf16": bf_mb, "w4": w4_mb, "fp8": fp8_mb}
        for M in MS:
            x = torch.randn(M, K, device=DEVICE, dtype=torch.bfloat16)
            calls = 48 if M <= 64 else (16 if M <= 1024 else 6)
            row = dict(shape=name, N=N, K=K, M=M, us={}, gbs={}, mb=mbs)
            for vname, (kind, fn) in variants(M, args.quick).items():
                try:
                    us = time_us(fn, sets[kind], x, calls)
                except Exception as e:
                    print(f"  {name} M={M} {vname}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                    continue
                row["us"][vname] = us
                row["gbs"][vname] = mbs[kind] * 1e-3 / (us * 1e-6) if M == 1 else None
            if name == "down" and M >= 16:  # the down projection's input: silu_and_mul then quantize, or fused
                x2 = torch.randn(M, 2 * K, device=DEVICE, dtype=torch.bfloat16)
                for vname, fn in {"silu_and_mul + quantize": lambda x, w: quantize_fp8_rows(silu_and_mul(x)),
                                  "silu_and_mul_quant_fp8 (fused)": lambda x, w: silu_and_mul_quant_fp8(x)}.items():
                    try:
                        row["us"][vname] = time_us(fn, [None], x2, calls)
                    except Exception as e:
                        print(f"  {name} M={M} {vname}: {type(e).__name__}: {str(e)[:200]}", flush=True)
            rows.append(row)
            line = "  ".join(f"{k} {v:.1f}" for k, v in row["us"].items())
            print(f"{name:8} M={M:5}  {line}", flush=True)
        del sets
        torch.cuda.empty_cache()
    print_table(rows, copy_tbs)
    print_gemv_table(rows)
    print(f"\nchecks {'all ok' if ok else 'FAILED'}; total {time.time() - t_start:.0f} s")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "quant_kernels.json"), "w") as fh:
            json.dump(dict(rows=rows, checks=checks, copy_tbs=copy_tbs), fh, indent=1)


def _best(us: dict, prefix: str):
    cands = {k: v for k, v in us.items() if k.startswith(prefix)}
    if not cands:
        return None, float("nan")
    k = min(cands, key=cands.get)
    return k, cands[k]


def print_gemv_table(rows):
    """The GEMV variants side by side: best block configuration of each, us and TB/s of weight bytes."""
    cols = [("bf16", "bf16", "bf16"), ("w4 gemv ", "w4 fp32", "w4"), ("w4 packed ", "w4 packed", "w4"),
            ("fp8 gemv ", "fp8 tile", "fp8"), ("fp8 wide ", "fp8 wide", "fp8")]
    print("\n## GEMV variants (best block configuration of each: us, TB/s of weight bytes; x = speedup over bf16)")
    print("| shape | M | " + " | ".join(c[1] for c in cols) + " | best w4 | best fp8 |")
    print("| --- | ---: |" + " ---: |" * len(cols) + " --- | --- |")
    for r in rows:
        if r["M"] not in GEMV_MS:
            continue
        bf = r["us"].get("bf16", float("nan"))
        cells, best = [], {}
        for prefix, _, kind in cols:
            k, us = (prefix, r["us"].get(prefix, float("nan"))) if prefix == "bf16" else _best(r["us"], prefix)
            tbs = r["mb"][kind] * 1e-6 / (us * 1e-6) if us == us else float("nan")
            cells.append(f"{us:.1f} ({tbs:.2f} TB/s, {bf / us:.2f}x)")
            if kind != "bf16" and (kind not in best or us < best[kind][1]):
                best[kind] = (k, us)
        print(f"| {r['shape']} | {r['M']} | " + " | ".join(cells) + " | " +
              " | ".join(str(best.get(kind, ("-",))[0]) for kind in ("w4", "fp8")) + " |")


def print_table(rows, copy_tbs):
    print(f"\n## Results (us per call; x = speedup over bf16; GB/s of weight read at M=1; copy {copy_tbs:.2f} TB/s)")
    print("| shape | M | bf16 | w4a16_linear | best w4 (variant) | fp8_linear | best fp8 (variant) |")
    print("| --- | ---: | ---: | ---: | --- | ---: | --- |")
    for r in rows:
        us, bf = r["us"], r["us"].get("bf16", float("nan"))

        def cell(k):
            v = us.get(k, float("nan"))
            gb = r["gbs"].get(k)
            return f"{v:.1f} ({bf / v:.2f}x{', %.0f GB/s' % gb if gb else ''})"
        bw4, bw4us = _best(us, "w4 ")
        bf8, bf8us = _best(us, "fp8 ")
        print(f"| {r['shape']} | {r['M']} | {bf:.1f}{' (%.0f GB/s)' % r['gbs']['bf16'] if r['M'] == 1 else ''} | "
              f"{cell('w4a16_linear')} | {bw4us:.1f} ({bf / bw4us:.2f}x) {bw4} | {cell('fp8_linear')} | "
              f"{bf8us:.1f} ({bf / bf8us:.2f}x) {bf8} |")
    one = [r for r in rows if r["M"] == 1]
    if len(one) == len(SHAPES):
        def total(k):
            return LAYERS * sum(r["us"].get(k, float("nan")) for r in one) / 1e3
        bf = total("bf16")
        w4, f8 = total("w4a16_linear"), total("fp8_linear")
        print(f"\n32-layer linear time per token at M=1: bf16 {bf:.3f} ms, w4a16 {w4:.3f} ms ({bf / w4:.2f}x), "
              f"fp8 {f8:.3f} ms ({bf / f8:.2f}x)  (the bf16 LM head, ~1.05 GB, comes on top of each)")


if __name__ == "__main__":
    main()
