"""GPU check and benchmark for the kernels: `python -m benchmarks.kernels [--sweep]`.

(a) checks every kernel against its float32 reference at realistic shapes (bf16 and fp16),
    including decode replayed from a CUDA graph;
(b) times decode attention (Llama-3.1-8B heads) against the measured copy bandwidth and prefill
    attention in TFLOP/s, each next to torch's scaled_dot_product_attention on the same data.
--sweep also times a grid of block sizes / warps / stages / split counts.
Writes bench.json under $OUT when that is set.
"""

import argparse
import json
import os
import sys

import torch
import triton
import triton.testing

from engine.layers.rotary import build_cos_sin_cache
from kernels import (
    argmax,
    decode_attention,
    paged_decode_attention,
    paged_decode_attention_ref,
    paged_prefill_attention,
    paged_prefill_attention_ref,
    rms_norm,
    rms_norm_ref,
    silu_and_mul,
    silu_and_mul_ref,
)
from kernels.rotary import rotary_store_kv, rotary_store_kv_ref

HQ, HKV, D, BS = 32, 8, 128, 16  # Llama-3.1-8B attention shapes, block size 16
RESULTS: dict = {"checks": [], "timings": []}


def rel_err(out, ref):
    out, ref = out.float(), ref.float()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check(name, out, ref, tol=1e-2):
    err = rel_err(out, ref)
    ok = err < tol
    RESULTS["checks"].append({"name": name, "rel_err": err, "ok": ok})
    print(f"{'ok  ' if ok else 'FAIL'} {name:58s} rel_err={err:.2e}", flush=True)
    return ok


def bench_ms(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def paged_cache(ctx_lens, dtype, hkv=HKV, d=D, spare=8):
    """Random K/V in shuffled blocks, as a long-running server's cache looks."""
    need = [triton.cdiv(n, BS) for n in ctx_lens]
    nblocks = sum(need) + spare
    k = torch.randn(nblocks, BS, hkv, d, device="cuda", dtype=dtype)
    v = torch.randn(nblocks, BS, hkv, d, device="cuda", dtype=dtype)
    perm = torch.randperm(nblocks, device="cuda").to(torch.int32)
    bt = torch.zeros(len(ctx_lens), max(need), dtype=torch.int32, device="cuda")
    i = 0
    for b, n in enumerate(need):
        bt[b, :n] = perm[i:i + n]
        i += n
    return k, v, bt, torch.tensor(ctx_lens, dtype=torch.int32, device="cuda")


def f32(*ts):
    return [t.float() for t in ts]


def run_checks():
    ok = True
    for dtype in (torch.bfloat16, torch.float16):
        dn = str(dtype).split(".")[1]
        # decode: GQA ratios 1/4/8, head dims 64/128, ragged lengths around block edges, split counts.
        lens = [1, 15, 16, 17, 33, 255, 1000, 4096, 3000, 7]
        for hq, hkv, d in ((8, 8, 128), (32, 8, 128), (64, 8, 128), (32, 8, 64)):
            kc, vc, bt, cl = paged_cache(lens, dtype, hkv, d)
            q = torch.randn(len(lens), hq, d, device="cuda", dtype=dtype)
            ref = paged_decode_attention_ref(*f32(q, kc, vc), bt, cl, d ** -0.5)
            for ns in (None, 1, 8):
                out = torch.full_like(q, float("nan"))
                paged_decode_attention(q, kc, vc, bt, cl, d ** -0.5, num_splits=ns, out=out)
                ok &= check(f"decode {dn} hq={hq} hkv={hkv} d={d} splits={ns}", out, ref)

        # decode from a CUDA graph: capture once, then change lengths in place and replay.
        kc, vc, bt, cl = paged_cache([4096] * 8, dtype)
        q = torch.randn(8, HQ, D, device="cuda", dtype=dtype)
        out = torch.empty_like(q)
        paged_decode_attention(q, kc, vc, bt, cl, D ** -0.5, max_context_len=4096, out=out)  # compile
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            paged_decode_attention(q, kc, vc, bt, cl, D ** -0.5, max_context_len=4096, out=out)
        cl.copy_(torch.tensor([1, 17, 4096, 100, 2049, 0, 33, 512], dtype=torch.int32))
        q.copy_(torch.randn_like(q))
        out.fill_(float("nan"))
        g.replay()
        ref = paged_decode_attention_ref(*f32(q, kc, vc), bt, cl, D ** -0.5)
        ok &= check(f"decode {dn} CUDA graph replay, new lengths", out, ref)

        # prefill: ragged new tokens, with and without a cached prefix, GQA 1/4/8.
        new, prefix = [1, 15, 16, 17, 300, 1024, 77], [0, 16, 5, 0, 512, 0, 33]
        for hq, hkv, d in ((8, 8, 128), (32, 8, 128), (64, 8, 128), (32, 8, 64)):
            kc, vc, bt, cl = paged_cache([n + p for n, p in zip(new, prefix)], dtype, hkv, d)
            cu = torch.tensor([0] + torch.tensor(new).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
            q = torch.randn(sum(new), hq, d, device="cuda", dtype=dtype)
            out = torch.full_like(q, float("nan"))
            paged_prefill_attention(q, kc, vc, bt, cu, cl, d ** -0.5, out=out)
            ref = paged_prefill_attention_ref(*f32(q, kc, vc), bt, cu, cl, d ** -0.5)
            ok &= check(f"prefill {dn} hq={hq} hkv={hkv} d={d} (prefix+none)", out, ref)

        x = torch.randn(512, 4096, device="cuda", dtype=dtype)
        r = torch.randn_like(x)
        w = (1 + 0.1 * torch.randn(4096, device="cuda")).to(dtype)
        ok &= check(f"rms_norm {dn}", rms_norm(x, w, 1e-5), rms_norm_ref(*f32(x, w), 1e-5))
        o, s = rms_norm(x, w, 1e-5, residual=r)
        ro, rs = rms_norm_ref(*f32(x, w), 1e-5, residual=r.float())
        ok &= check(f"rms_norm+residual {dn} (out)", o, ro) & check(f"rms_norm+residual {dn} (sum)", s, rs)

        x = torch.randn(512, 2 * 14336, device="cuda", dtype=dtype)
        ok &= check(f"silu_and_mul {dn}", silu_and_mul(x), silu_and_mul_ref(x.float()))

        cache = build_cos_sin_cache(D, 131072, 500000.0, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                          "high_freq_factor": 4.0,
                                                          "original_max_position_embeddings": 8192}, device="cuda")
        # rotary + KV-cache write in one kernel: q rotated in place, rotated k and v into their slots (-1 skipped).
        T = 512
        qkv = torch.randn(T, (HQ + 2 * HKV) * D, device="cuda", dtype=dtype)
        q = qkv[:, :HQ * D].view(T, HQ, D)
        k = qkv[:, HQ * D:(HQ + HKV) * D].view(T, HKV, D)
        v = qkv[:, (HQ + HKV) * D:].view(T, HKV, D)
        pos = torch.randint(0, 131072, (T,), device="cuda")
        slots = torch.randperm(2048 * BS, device="cuda")[:T]
        slots[::7] = -1
        kc = torch.randn(2048, BS, HKV, D, device="cuda", dtype=dtype)
        vc = torch.randn_like(kc)
        qr, kr, vr = q.clone(), kc.clone(), vc.clone()
        rotary_store_kv_ref(pos, qr, k, v, cache, kr, vr, slots)
        rotary_store_kv(pos, q, k, v, cache, kc, vc, slots)
        ok &= check(f"rotary_store_kv q {dn}", q, qr) & check(f"rotary_store_kv k cache {dn}", kc, kr)
        ok &= check(f"rotary_store_kv v cache {dn}", vc, vr)
    return ok


def copy_bandwidth():
    src = torch.randn(2 * 1024 ** 3 // 4, device="cuda")  # 2 GiB
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / ms / 1e9  # TB/s, counting bytes read plus bytes written


def sdpa(q, k, v, causal):
    try:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    except TypeError:  # older torch: expand kv heads
        rep = q.shape[1] // k.shape[1]
        return torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), is_causal=causal)


def time_decode(B, ctx, copy_bw, sweep):
    dtype = torch.bfloat16
    kc, vc, bt, cl = paged_cache([ctx] * B, dtype)
    q = torch.randn(B, HQ, D, device="cuda", dtype=dtype)
    nbytes = 2 * B * ctx * HKV * D * 2 + 2 * q.numel() * 2
    rows = []

    def record(label, ms):
        tbs = nbytes / ms / 1e9
        row = {"kernel": f"decode B={B} ctx={ctx}", "variant": label, "ms": ms, "TB/s": tbs,
               "pct_copy_bw": 100 * tbs / copy_bw}
        rows.append(row)
        print(f"  decode B={B:3d} ctx={ctx:6d} {label:48s} {ms * 1e3:8.1f} us {tbs:6.2f} TB/s "
              f"{row['pct_copy_bw']:5.1f}% of copy", flush=True)

    ms = bench_ms(lambda: paged_decode_attention(q, kc, vc, bt, cl, D ** -0.5, max_context_len=ctx))
    ns = decode_attention.choose_num_splits(B, HKV, ctx, q.device, decode_attention.DEFAULTS)
    record(f"triton default (splits={ns})", ms)
    best = rows[-1]
    if sweep:
        for bn in (64, 128):
            for nw in (4, 8):
                for st in (2, 3):
                    for spl in sorted({1, 2, 4, ns} if B > 1 else {16, 32, 64, 128}):
                        try:
                            ms = bench_ms(lambda: paged_decode_attention(
                                q, kc, vc, bt, cl, D ** -0.5, num_splits=spl, block_n=bn, num_warps=nw,
                                num_stages=st))
                        except Exception as e:  # out of shared memory etc.
                            print(f"  skip bn={bn} nw={nw} st={st} splits={spl}: {type(e).__name__}")
                            continue
                        record(f"bn={bn} warps={nw} stages={st} splits={spl}", ms)
                        if rows[-1]["ms"] < best["ms"]:
                            best = rows[-1]
    # SDPA on the same data, laid out contiguously per sequence.
    pos = torch.arange(ctx, device="cuda")
    kd = kc[bt[:, pos // BS].long(), pos % BS].transpose(1, 2).contiguous()  # [B, Hkv, ctx, D]
    vd = vc[bt[:, pos // BS].long(), pos % BS].transpose(1, 2).contiguous()
    q4 = q[:, :, None, :]
    ref = sdpa(q4, kd, vd, False)[:, :, 0]
    check(f"decode B={B} ctx={ctx} vs sdpa", paged_decode_attention(q, kc, vc, bt, cl, D ** -0.5), ref)
    record("torch sdpa (contiguous, enable_gqa)", bench_ms(lambda: sdpa(q4, kd, vd, False)))
    RESULTS["timings"] += rows
    return rows, best


def time_prefill(B, n, sweep):
    dtype = torch.bfloat16
    kc, vc, bt, cl = paged_cache([n] * B, dtype)
    cu = torch.arange(0, (B + 1) * n, n, dtype=torch.int32, device="cuda")
    q = torch.randn(B * n, HQ, D, device="cuda", dtype=dtype)
    flops = 4 * B * HQ * D * n * n / 2  # QK^T and PV, causal half
    rows = []

    def record(label, ms):
        tf = flops / ms / 1e9
        rows.append({"kernel": f"prefill B={B} new={n}", "variant": label, "ms": ms, "TFLOP/s": tf})
        print(f"  prefill B={B} new={n} {label:48s} {ms * 1e3:8.1f} us {tf:7.1f} TFLOP/s", flush=True)

    record("triton default", bench_ms(lambda: paged_prefill_attention(q, kc, vc, bt, cu, cl, D ** -0.5)))
    best = rows[-1]
    if sweep:
        for bm, bn, nw, st in ((128, 64, 8, 2), (128, 64, 8, 4), (128, 128, 8, 2), (128, 128, 8, 3),
                               (64, 64, 4, 3), (64, 128, 4, 3), (128, 32, 4, 3), (128, 64, 4, 3),
                               (64, 64, 8, 3), (256, 64, 8, 3)):
            try:
                ms = bench_ms(lambda: paged_prefill_attention(q, kc, vc, bt, cu, cl, D ** -0.5, block_m=bm,
                                                              block_n=bn, num_warps=nw, num_stages=st))
            except Exception as e:
                print(f"  skip bm={bm} bn={bn} nw={nw} st={st}: {type(e).__name__}")
                continue
            record(f"bm={bm} bn={bn} warps={nw} stages={st}", ms)
            if rows[-1]["ms"] < best["ms"]:
                best = rows[-1]
    pos = torch.arange(n, device="cuda")
    kd = kc[bt[:, pos // BS].long(), pos % BS].transpose(1, 2).contiguous()
    vd = vc[bt[:, pos // BS].long(), pos % BS].transpose(1, 2).contiguous()
    q4 = q.view(B, n, HQ, D).transpose(1, 2).contiguous()
    ref = sdpa(q4, kd, vd, True).transpose(1, 2).reshape(B * n, HQ, D)
    check(f"prefill B={B} new={n} vs sdpa", paged_prefill_attention(q, kc, vc, bt, cu, cl, D ** -0.5), ref)
    record("torch sdpa (contiguous, causal, enable_gqa)", bench_ms(lambda: sdpa(q4, kd, vd, True)))
    RESULTS["timings"] += rows
    return rows, best


def time_elementwise(copy_bw):
    dtype, T = torch.bfloat16, 8192
    x = torch.randn(T, 4096, device="cuda", dtype=dtype)
    r, w = torch.randn_like(x), torch.ones(4096, device="cuda", dtype=dtype)
    g = torch.randn(T, 2 * 14336, device="cuda", dtype=dtype)
    qkv = torch.randn(T, (HQ + 2 * HKV) * D, device="cuda", dtype=dtype)
    q, k = qkv[:, :HQ * D].view(T, HQ, D), qkv[:, HQ * D:(HQ + HKV) * D].view(T, HKV, D)
    v = qkv[:, (HQ + HKV) * D:].view(T, HKV, D)
    cache = build_cos_sin_cache(D, 8192, 500000.0, device="cuda")
    pos = torch.randint(0, 8192, (T,), device="cuda")
    kc = torch.empty(T // BS + 16, BS, HKV, D, device="cuda", dtype=dtype)
    vc = torch.empty_like(kc)
    slots = torch.randperm(T, device="cuda")
    cases = [
        ("rms_norm T=8192 H=4096", lambda: rms_norm(x, w, 1e-5), 2 * x.numel() * 2),
        ("rms_norm+residual T=8192 H=4096", lambda: rms_norm(x, w, 1e-5, residual=r), 4 * x.numel() * 2),
        ("silu_and_mul T=8192 I=14336", lambda: silu_and_mul(g), g.numel() * 2 * 3 // 2),
        ("rotary_store_kv T=8192", lambda: rotary_store_kv(pos, q, k, v, cache, kc, vc, slots),
         (2 * q.numel() + 3 * k.numel() + 3 * v.numel()) * 2),
    ]
    rows = []
    for name, fn, nbytes in cases:
        ms = bench_ms(fn)
        tbs = nbytes / ms / 1e9
        rows.append({"kernel": name, "variant": "triton", "ms": ms, "TB/s": tbs, "pct_copy_bw": 100 * tbs / copy_bw})
        print(f"  {name:40s} {ms * 1e3:8.1f} us {tbs:6.2f} TB/s {100 * tbs / copy_bw:5.1f}% of copy", flush=True)
    RESULTS["timings"] += rows
    return rows


def time_argmax(copy_bw):
    """Greedy sampling over a Llama-3 vocabulary: the Triton kernel against what the sampler did before
    (logits to fp32, then torch.argmax); both in a CUDA graph, as a served step launches them back to back."""
    rows = []
    for B in (1, 64):
        x = torch.randn(B, 128256, device="cuda", dtype=torch.bfloat16)
        x[:, 1000] = x[:, 77000] = 10.0  # a tie: the lower index must win, as in torch
        ok = torch.equal(argmax(x), x.float().argmax(-1))
        RESULTS["checks"].append({"name": f"argmax B={B} V=128256 bf16 (exact)", "rel_err": 0.0 if ok else 1.0,
                                  "ok": ok})
        print(f"{'ok  ' if ok else 'FAIL'} argmax B={B} V=128256 bf16 (exact, tie at 1000 / 77000)", flush=True)
        for label, fn in (("torch: logits.float().argmax(-1)", lambda: x.float().argmax(-1)),
                          ("triton (kernels/argmax.py)", lambda: argmax(x))):
            ms = triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")
            tbs = x.numel() * 2 / ms / 1e9
            rows.append({"kernel": f"argmax B={B} V=128256", "variant": label, "ms": ms, "TB/s": tbs,
                         "pct_copy_bw": 100 * tbs / copy_bw})
            print(f"  argmax B={B} {label:36s} {ms * 1e3:8.1f} us", flush=True)
    RESULTS["timings"] += rows
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", action="store_true", help="also time a grid of launch configurations")
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("--argmax", action="store_true", help="only the greedy-argmax check and timing")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "benchmarks.kernels needs a CUDA GPU"
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    RESULTS["device"] = {"name": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
                         "triton": triton.__version__}
    print(f"device: {props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}, "
          f"triton {triton.__version__}", flush=True)
    ok = True
    if not args.skip_checks and not args.argmax:
        ok = run_checks()
    copy_bw = copy_bandwidth()
    RESULTS["copy_bw_TBs"] = copy_bw
    print(f"copy bandwidth (read+write): {copy_bw:.2f} TB/s", flush=True)
    if args.argmax:
        time_argmax(copy_bw)
        sys.exit(0 if all(c["ok"] for c in RESULTS["checks"]) else 1)
    table = []
    for B, ctx in ((64, 2048), (1, 32768)):
        rows, best = time_decode(B, ctx, copy_bw, args.sweep)
        table += [rows[0], rows[-1]] + ([best] if best is not rows[0] else [])
    rows, best = time_prefill(8, 1024, args.sweep)
    table += [rows[0], rows[-1]] + ([best] if best is not rows[0] else [])
    table += time_elementwise(copy_bw)
    table += time_argmax(copy_bw)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "bench.json"), "w") as f:
            json.dump(RESULTS, f, indent=1)
    n_bad = sum(not c["ok"] for c in RESULTS["checks"])
    print(f"\n== {props.name}; copy bandwidth {copy_bw:.2f} TB/s; checks: "
          f"{len(RESULTS['checks']) - n_bad}/{len(RESULTS['checks'])} ok ==")
    print(f"{'kernel':34s} {'variant':48s} {'time us':>9s} {'rate':>16s}")
    for r in table:
        rate = (f"{r['TB/s']:.2f} TB/s {r['pct_copy_bw']:4.0f}%" if "TB/s" in r else f"{r['TFLOP/s']:.1f} TFLOP/s")
        print(f"{r['kernel']:34s} {r['variant']:48s} {r['ms'] * 1e3:9.1f} {rate:>16s}")
    sys.exit(0 if ok and n_bad == 0 else 1)


if __name__ == "__main__":
    main()
