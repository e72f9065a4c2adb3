"""Prefill attention variants on the GPU in one call: `python -m benchmarks.prefill_sweep` (about 1-2 minutes).

1. checks every variant (benchmarks/prefill_variants.py) against the fp32 reference on a ragged batch (cached
   prefixes, zero-length rows, GQA 4) in bf16, and two packed ones (every switch both ways) over an fp8 cache;
   a variant that fails is not timed;
2. times, Llama-3.1-8B heads (32 query, 8 KV, D 128), bf16, block size 16, shuffled blocks:
   - causal: 8 x 1024 new tokens, next to torch SDPA on contiguous tensors with each backend (flash, cudnn,
     efficient, default; K/V expanded to 32 heads so that every backend takes them);
   - extend: a 1536-token cached prefix plus 64 / 128 / 256 new tokens, batches 8 and 32, next to SDPA with a
     lower-right causal mask (torch.nn.attention.bias.causal_lower_right);
   - mixed: 4 prefills (256-1024 new tokens over 0-1536 cached) among 28 zero-length rows, as a mixed step's
     fixed-B launch looks (measured against the best SDPA TFLOP/s of the causal case);
   variants with own_kv get the new tokens' K/V as [T, 8, 128] rows (what rotary_store_kv(..., k_in_place=True)
   leaves in k and v), and are reported apart: TUNED cannot pass tensors, the engine would have to;
3. prints the table last (us / TFLOP/s / % of the best SDPA of the case) and the TUNED entries for
   kernels/prefill_attention.py that the figures recommend. Writes prefill_sweep.json under $OUT when set.
`--dry-run` runs the same steps on the CPU under the Triton interpreter at toy sizes (figures meaningless): a
check of the script itself before GPU time is spent on it.
"""

import functools
import json
import math
import os
import sys
import time

DRY = "--dry-run" in sys.argv
if DRY:  # before triton is imported
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from benchmarks.prefill_variants import VARIANTS
from kernels import paged_prefill_attention, paged_prefill_attention_ref

HQ, HKV, D, BS = (8, 2, 32, 16) if DRY else (32, 8, 128, 16)
DEV = "cpu" if DRY else "cuda"
DRY_TIMED = ("base", "packed", "packed_own")  # the interpreter is slow: a dry run times these only
TABLE_WIDTH = 8 if DRY else 128  # block-table columns for every case: one stride, so one compiled kernel per variant
SCALE = D ** -0.5
FP8_CHECKED = ("packed", "packed_plain")  # between them every switch of the packed kernel both ways (one compile each)
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "default": None}


def bench_us(fn) -> float:
    if DRY:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e6
    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median") * 1e3


class Case:
    """A batch of sequences (new tokens, cached prefix) over a shuffled paged cache, with its exact FLOPs."""

    def __init__(self, name, new, prefix, dtype=torch.bfloat16, seed=0):
        torch.manual_seed(seed)
        self.name, self.new, self.prefix = name, new, prefix
        ctx = [n + p for n, p in zip(new, prefix)]
        need = [math.ceil(c / BS) for c in ctx]
        nblocks = sum(need) + 4
        self.k = torch.randn(nblocks, BS, HKV, D, device=DEV).to(dtype)
        self.v = torch.randn(nblocks, BS, HKV, D, device=DEV).to(dtype)
        perm = torch.randperm(nblocks, device=DEV).to(torch.int32)
        self.bt = torch.full((len(new), TABLE_WIDTH), nblocks - 1, dtype=torch.int32, device=DEV)
        i = 0
        for b, n in enumerate(need):
            self.bt[b, :n] = perm[i:i + n]
            i += n
        self.cu = torch.tensor([0] + list(torch.tensor(new).cumsum(0)), dtype=torch.int32, device=DEV)
        self.ctx = torch.tensor(ctx, dtype=torch.int32, device=DEV)
        self.q = torch.randn(sum(new), HQ, D, device=DEV).to(torch.bfloat16)
        # each new token i (0-based) of a sequence attends prefix + i + 1 keys: QK^T and PV, 2 FLOPs a MAC
        self.flops = sum(4 * HQ * D * (n * p + n * (n + 1) // 2) for n, p in zip(new, prefix))

    def run(self, own_kv=False, **overrides):
        if own_kv:  # the new tokens' K/V as the step's k and v hold them (rotary_store_kv(..., k_in_place=True))
            overrides.update(k_new=self.k_new, v_new=self.v_new)
        return paged_prefill_attention(self.q, self.k, self.v, self.bt, self.cu, self.ctx, SCALE, **overrides)

    @functools.cached_property
    def k_new(self):
        return self._new_rows(self.k)

    @functools.cached_property
    def v_new(self):
        return self._new_rows(self.v)

    def _new_rows(self, cache):
        pos = torch.cat([torch.arange(p, p + n, device=DEV) for n, p in zip(self.new, self.prefix)])
        seq = torch.cat([torch.full((n,), b, device=DEV) for b, n in enumerate(self.new)])
        return cache[self.bt[seq, pos // BS].long(), pos % BS].contiguous()

    def dense(self):
        """q, K, V as SDPA takes them ([B, 32, n, D], K/V expanded), for batches of equal lengths."""
        B, n, ctx = len(self.new), self.new[0], self.prefix[0] + self.new[0]
        pos = torch.arange(ctx, device=DEV)
        kd, vd = (c[self.bt[:, pos // BS].long(), pos % BS].repeat_interleave(HQ // HKV, 2).transpose(1, 2)
                  .contiguous() for c in (self.k, self.v))
        return self.q.view(B, n, HQ, D).transpose(1, 2).contiguous(), kd, vd


def fp8_case(case):
    """The same case over an e4m3 cache (per-tensor scales), for the variants that read one."""
    k_scale, v_scale = (c.float().abs().amax() / 448.0 for c in (case.k, case.v))
    k8, v8 = (c.float().div(s).to(torch.float8_e4m3fn) for c, s in ((case.k, k_scale), (case.v, v_scale)))
    return k8, v8, k_scale.reshape(1), v_scale.reshape(1)


def check_variants(results) -> list[str]:
    if DRY:
        case = Case("check", [1, 0, 20, 33, 0], [0, 30, 15, 17, 5], seed=1)
    else:
        case = Case("check", [1, 0, 100, 257, 0, 64, 16, 33], [0, 30, 1536, 17, 5, 700, 0, 1024], seed=1)
    f32 = [t.float() for t in (case.q, case.k, case.v)]
    ref = paged_prefill_attention_ref(f32[0], f32[1], f32[2], case.bt, case.cu, case.ctx, SCALE)
    k8, v8, ks, vs = fp8_case(case)
    ref8 = paged_prefill_attention_ref(f32[0], k8.float(), v8.float(), case.bt, case.cu, case.ctx, SCALE, ks, vs)
    ok_names = []
    for name, ov in VARIANTS.items():
        try:
            err = rel_err(case.run(**ov), ref)
            if name in FP8_CHECKED:
                out8 = paged_prefill_attention(case.q, k8, v8, case.bt, case.cu, case.ctx, SCALE, k_scale=ks,
                                               v_scale=vs, **ov)
                err = max(err, rel_err(out8, ref8))
        except Exception as e:  # a variant the compiler rejects on this GPU: reported, not timed
            print(f"FAIL {name}: {type(e).__name__}: {str(e)[:200]}", flush=True)
            results["checks"].append({"variant": name, "error": str(e)[:500]})
            continue
        ok = err < 1e-2
        print(f"{'ok  ' if ok else 'FAIL'} {name:16s} rel_err={err:.2e}", flush=True)
        results["checks"].append({"variant": name, "rel_err": err, "ok": ok})
        if ok:
            ok_names.append(name)
    return ok_names


def rel_err(out, ref):
    out, ref = out.float(), ref.float()
    return float("inf") if not torch.isfinite(out).all() else ((out - ref).norm() / ref.norm()).item()


def time_sdpa(case, causal: bool) -> dict:
    """us per SDPA backend on the case's dense tensors (checked against our default first)."""
    q, kd, vd = case.dense()
    n, ctx = q.shape[2], kd.shape[2]
    mask = None if causal else causal_lower_right(n, ctx)
    want = case.run().view(len(case.new), n, HQ, D).transpose(1, 2)
    times = {}
    for label, backend in BACKENDS.items():
        def call():
            return F.scaled_dot_product_attention(q, kd, vd, attn_mask=mask, is_causal=causal, scale=SCALE)
        try:
            if backend is None:
                err, us = rel_err(call(), want), bench_us(call)
            else:
                with sdpa_kernel([backend]):
                    err, us = rel_err(call(), want), bench_us(call)
        except Exception as e:
            print(f"  sdpa {label} unavailable for {case.name}: {type(e).__name__}", flush=True)
            continue
        if err > 2e-2:
            print(f"  sdpa {label} disagrees with the kernel on {case.name}: rel_err {err:.2e}", flush=True)
        times[f"sdpa {label}"] = us
    return times


def cases():
    if DRY:
        yield Case("causal 2x40", [40] * 2, [0] * 2), "sdpa causal"
        yield Case("ext 2x16", [16] * 2, [40] * 2), "sdpa lower-right"
        yield Case("mixed 2/5", [0, 0, 20, 0, 9], [0, 3, 16, 0, 30]), None
        return
    yield Case("causal 8x1024", [1024] * 8, [0] * 8), "sdpa causal"
    for B in (8, 32):
        for n in (64, 128, 256):
            yield Case(f"ext {B}x{n}", [n] * B, [1536] * B, seed=B + n), "sdpa lower-right"
    new = [0] * 28 + [1024, 512, 256, 300]
    yield Case("mixed 4/32", new, [0] * 28 + [0, 1536, 700, 1024], seed=5), None


def recommend(table: dict, ok_names: list[str]) -> tuple[dict, dict]:
    """TUNED entries for kernels/prefill_attention.py: the fastest checked variant of the causal case ("long"),
    and the one with the best geometric mean over the extend and mixed cases ("short"). Variants with own_kv need
    the engine to pass k_new / v_new, which TUNED cannot: they are picked apart ("long own", "short own")."""
    def best(case_names, names):
        def score(v):
            return sum(math.log(table[c][v]) for c in case_names) / len(case_names)
        names = [v for v in names if all(v in table[c] for c in case_names)]
        return min(names, key=score) if names else None
    causal = next(iter(table))  # cases() yields the causal case first
    groups = {"long": [causal], "short": [c for c in table if c != causal]}
    plain = [v for v in ok_names if not VARIANTS[v].get("own_kv")]
    own = [v for v in ok_names if VARIANTS[v].get("own_kv")]
    picks = {key: best(cs, plain) for key, cs in groups.items()}
    picks.update({f"{key} own": best(cs, own) for key, cs in groups.items()})
    tuned = {key: VARIANTS[picks[key]] if picks[key] else {} for key in groups}
    return tuned, picks


def main() -> None:
    results = {"checks": [], "timings": {}}
    ok_names = check_variants(results)
    table, sdpa_best, flops = {}, {}, {}
    for case, sdpa in cases():
        row = {}
        for name in ok_names if not DRY else [n for n in ok_names if n in DRY_TIMED]:
            row[name] = bench_us(lambda: case.run(**VARIANTS[name]))
        if sdpa:
            row.update(time_sdpa(case, causal=case.prefix[0] == 0))
        table[case.name], flops[case.name] = row, case.flops
        sdpa_us = [us for k, us in row.items() if k.startswith("sdpa")]
        sdpa_best[case.name] = case.flops / min(sdpa_us) / 1e6 if sdpa_us else None
        results["timings"][case.name] = {"flops": case.flops, "us": row}
        print(f"timed {case.name}: {', '.join(f'{k} {v:.0f}' for k, v in row.items())}", flush=True)
    ref_tf = next(iter(sdpa_best.values()))  # the causal case's
    print("\nus / TFLOP/s / % of the case's best SDPA (mixed: of the causal case's best SDPA TFLOP/s)")
    names = list(dict.fromkeys(k for row in table.values() for k in row))
    print(f"{'':18s}" + "".join(f"{c:>18s}" for c in table))
    for name in names:
        cells = []
        for c, row in table.items():
            if name not in row:
                cells.append(f"{'-':>18s}")
                continue
            tf = flops[c] / row[name] / 1e6
            pct = 100 * tf / (sdpa_best[c] or ref_tf or tf)
            cells.append(f" {row[name]:8.0f}/{tf:4.0f}/{pct:3.0f}%")
        print(f"{name:18s}" + "".join(cells))
    tuned, picks = recommend({c: {k: v for k, v in row.items() if not k.startswith("sdpa")}
                              for c, row in table.items()}, ok_names)
    results["recommended"], results["picks"] = tuned, picks
    print(f"\nfastest: {picks}")
    for key in ("long", "short"):
        own = picks[f"{key} own"]
        if own and picks[key]:
            cs = list(table)[:1] if key == "long" else list(table)[1:]
            gain = math.exp(sum(math.log(table[c][picks[key]] / table[c][own]) for c in cs) / len(cs))
            print(f"{key}: {own} (the step's own k / v: needs the engine to pass k_new / v_new and rotary_store_kv's "
                  f"k_in_place) runs {gain:.2f}x as fast as {picks[key]}")
    print("paste into kernels/prefill_attention.py:")
    print(f"TUNED: dict[str, dict] = {tuned!r}")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "prefill_sweep.json"), "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
