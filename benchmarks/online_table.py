"""The side-by-side table of issue 17: ferry against vLLM on the same workloads, with the ratios and the must-holds.

    python -m benchmarks.online_table FERRY VLLM [--out both.json]

FERRY and VLLM are each a folder of `ferry bench --out` files (benchmarks/online_side_by_side.sh writes
batch1.1.json, batch1.2.json, poisson.json, sharegpt1000.json, long200.json: the part of the name before the
first dot is the workload) or a JSON file this module wrote with --out (both sides, or one side's "runs").
Every ratio is ferry / vLLM; a must-hold bound says which way is better (<= for latency, >= for throughput).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from dataclasses import dataclass

POISSON_RATES = ("4", "16", "32")


@dataclass
class Row:
    label: str
    ferry: float | None
    vllm: float | None
    unit: str
    bound: tuple[str, float] | None = None  # ("<=", 1.2): ferry / vLLM must be at most 1.2

    @property
    def ratio(self) -> float | None:
        if self.ferry is None or self.vllm is None or not self.vllm:
            return None
        return self.ferry / self.vllm

    @property
    def verdict(self) -> str:
        if self.bound is None:
            return ""
        if self.ratio is None:
            return "no data"
        op, limit = self.bound
        ok = self.ratio <= limit + 1e-9 if op == "<=" else self.ratio >= limit - 1e-9
        return "ok" if ok else "MISS"


def collect(folder: str) -> dict[str, list[dict]]:
    """Workload -> the runs of every bench file for it in `folder`, in file-name order."""
    runs: dict[str, list[dict]] = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        key = os.path.basename(path).split(".", 1)[0]
        with open(path) as fh:
            runs.setdefault(key, []).extend(json.load(fh).get("runs", []))
    return runs


def load_side(path: str, side: str) -> dict[str, list[dict]]:
    if os.path.isdir(path):
        return collect(path)
    with open(path) as fh:
        doc = json.load(fh)
    return doc[side] if side in doc else doc.get("runs", doc)


def _complete(run: dict) -> bool:
    return run["summary"]["failed"] == 0 and run["summary"]["completed"] > 0


def _metric(runs: list[dict], key: str, pct: str | None = None, best=min) -> float | None:
    """The metric over the complete runs (best of them: min for latency, max for throughput)."""
    values = [r["summary"][key][pct] if pct else r["summary"][key] for r in runs if _complete(r)]
    return best(values) if values else None


def _poisson(runs: list[dict], rate: str) -> list[dict]:
    return [r for r in runs if r.get("request_rate") == rate]


def build_rows(ferry: dict[str, list[dict]], vllm: dict[str, list[dict]]) -> list[Row]:
    def row(label, key, metric, pct=None, unit="ms", bound=None, best=min, pick=lambda runs: runs):
        return Row(label, _metric(pick(ferry.get(key, [])), metric, pct, best),
                   _metric(pick(vllm.get(key, [])), metric, pct, best), unit, bound)

    rows = [row("batch 1 (5 in, 256 out): TPOT p50", "batch1", "tpot_ms", "p50", bound=("<=", 1 / 1.15)),
            row("batch 1: TTFT p50", "batch1", "ttft_ms", "p50", bound=("<=", 1.0))]
    for rate in POISSON_RATES:
        pick = lambda runs, rate=rate: _poisson(runs, rate)  # noqa: E731
        for metric, pct, limit in (("ttft_ms", "p50", 1.0), ("ttft_ms", "p99", 1.2), ("tpot_ms", "p50", 1.0),
                                   ("tpot_ms", "p99", 1.2)):
            rows.append(row(f"Poisson {rate} req/s: {metric[:4].upper()} {pct}", "poisson", metric, pct,
                            bound=("<=", limit), pick=pick))
    rows += [row("sharegpt-synth 1000 at once: output tok/s", "sharegpt1000", "output_throughput", unit="tok/s",
                 bound=(">=", 1.05), best=max),
             row("sharegpt-synth 1000 at once: TTFT p50", "sharegpt1000", "ttft_ms", "p50", bound=("<=", 1.0)),
             row("long prompts, 200 x (2000 in, 128 out) at once: total tok/s", "long200", "total_token_throughput",
                 unit="tok/s", bound=(">=", 1.0), best=max)]
    return rows


def _fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.0f} {unit}" if unit == "tok/s" else f"{value:.2f} {unit}"


def incomplete(side: dict[str, list[dict]]) -> list[str]:
    return [f"{r['name']}: {r['summary']['failed']} failed" for runs in side.values() for r in runs
            if r["summary"]["failed"]]


def format_table(ferry: dict[str, list[dict]], vllm: dict[str, list[dict]]) -> str:
    rows = build_rows(ferry, vllm)
    lines = ["| workload | ferry | vLLM 0.26 | ferry / vLLM | must hold | |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
        bound = f"{r.bound[0]} {r.bound[1]:.2f}" if r.bound else ""
        lines.append(f"| {r.label} | {_fmt(r.ferry, r.unit)} | {_fmt(r.vllm, r.unit)} | {ratio} | {bound} | "
                     f"{r.verdict} |")
    misses = sum(r.verdict == "MISS" for r in rows)
    missing = sum(r.verdict == "no data" for r in rows)
    lines.append(f"\n{len(rows) - misses - missing} of {len(rows)} must-hold rows met, {misses} missed, "
                 f"{missing} without data (latency: best of the complete runs; a run with failed requests is left out)")
    for side, runs in (("ferry", ferry), ("vLLM", vllm)):
        lines += [f"{side}: {x}" for x in incomplete(runs)]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ferry")
    ap.add_argument("vllm")
    ap.add_argument("--out", default="", help="write both sides' runs here as one JSON file")
    args = ap.parse_args(argv)
    ferry, vllm = load_side(args.ferry, "ferry"), load_side(args.vllm, "vllm")
    print(format_table(ferry, vllm))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"ferry": ferry, "vllm": vllm}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
