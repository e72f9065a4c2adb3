"""Summary math for one benchmark run (pure functions over per-request records)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass(slots=True)
class RequestRecord:
    prompt_len: int
    output_len: int  # tokens asked for
    start: float = 0.0  # seconds since the run began
    ttft: float = 0.0
    latency: float = 0.0  # send to last byte
    itl: list[float] = field(default_factory=list)  # gaps between streamed chunks
    output_tokens: int = 0  # tokens received (the usage count, else chunks)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first; None for a one-token answer."""
        if self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


def percentiles(values, ps=PERCENTILES) -> dict[str, float]:
    """{"mean", "p50", ...} in the values' unit; NaN-free: an empty list gives zeros."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return {"mean": 0.0, **{f"p{p}": 0.0 for p in ps}}
    return {"mean": float(arr.mean()), **{f"p{p}": float(np.percentile(arr, p)) for p in ps}}


def meets_slo(r: RequestRecord, slo_ttft_ms: float = 0.0, slo_tpot_ms: float = 0.0) -> bool:
    """Completed within both bounds (0: no bound); a one-token answer has no TPOT and meets any TPOT bound."""
    if not r.ok or (slo_ttft_ms and r.ttft * 1e3 > slo_ttft_ms):
        return False
    return not slo_tpot_ms or r.tpot is None or r.tpot * 1e3 <= slo_tpot_ms


def goodput(records: list[RequestRecord], duration: float, slo_ttft_ms: float, slo_tpot_ms: float) -> dict:
    """Requests per second that met both SLOs (vLLM's --goodput ttft:X tpot:Y), and their share of all sent."""
    good = sum(meets_slo(r, slo_ttft_ms, slo_tpot_ms) for r in records)
    return {"slo_ttft_ms": slo_ttft_ms, "slo_tpot_ms": slo_tpot_ms, "good_requests": good,
            "requests_per_s": good / duration if duration else 0.0,
            "fraction": good / len(records) if records else 0.0}


def summarize(records: list[RequestRecord], duration: float, slo_ttft_ms: float = 0.0,
              slo_tpot_ms: float = 0.0) -> dict:
    """Throughput and latency percentiles; with an SLO (ms, 0: none) also "goodput"."""
    ok = [r for r in records if r.ok]
    inp = sum(r.prompt_len for r in ok)
    out = sum(r.output_tokens for r in ok)
    ms = lambda xs: {k: v * 1e3 for k, v in percentiles(xs).items()}  # noqa: E731
    summary = {
        "completed": len(ok), "failed": len(records) - len(ok), "duration_s": duration,
        "input_tokens": inp, "output_tokens": out,
        "request_throughput": len(ok) / duration if duration else 0.0,
        "output_throughput": out / duration if duration else 0.0,
        "total_token_throughput": (inp + out) / duration if duration else 0.0,
        "ttft_ms": ms(r.ttft for r in ok),
        "tpot_ms": ms(t for r in ok if (t := r.tpot) is not None),
        "itl_ms": ms(x for r in ok for x in r.itl),
        "latency_ms": ms(r.latency for r in ok),
        "max_concurrency": max_concurrency(ok),
        "errors": sorted({r.error for r in records if r.error})[:5],
    }
    if slo_ttft_ms or slo_tpot_ms:
        summary["goodput"] = goodput(records, duration, slo_ttft_ms, slo_tpot_ms)
    return summary


def max_concurrency(records: list[RequestRecord]) -> int:
    """Most requests in flight at once (from start and start + latency)."""
    events = sorted([(r.start, 1) for r in records] + [(r.start + r.latency, -1) for r in records],
                    key=lambda e: (e[0], e[1]))
    now = best = 0
    for _, d in events:
        now += d
        best = max(best, now)
    return best


def concurrency_at_start(records: list[RequestRecord]) -> list[int]:
    """For each record, the requests in flight when it was sent (itself included): the load it met."""
    ends = np.sort([r.start + r.latency for r in records])
    starts = np.sort([r.start for r in records])
    return [int(np.searchsorted(starts, r.start, "right") - np.searchsorted(ends, r.start, "right")) for r in records]


def format_summary(name: str, s: dict) -> str:
    lines = [f"== {name}: {s['completed']} ok, {s['failed']} failed in {s['duration_s']:.2f} s",
             f"requests/s {s['request_throughput']:.2f}   output tok/s {s['output_throughput']:.1f}   "
             f"total tok/s {s['total_token_throughput']:.1f}   (in {s['input_tokens']}, out {s['output_tokens']})"]
    for key in ("ttft_ms", "tpot_ms", "itl_ms"):
        p = s[key]
        lines.append(f"{key[:-3].upper():5s} ms  mean {p['mean']:8.2f}  p50 {p['p50']:8.2f}  p90 {p['p90']:8.2f}  "
                     f"p99 {p['p99']:8.2f}")
    if "goodput" in s:
        g = s["goodput"]
        lines.append(f"goodput {g['requests_per_s']:.2f} req/s ({g['good_requests']} of {s['completed'] + s['failed']}"
                     f" within TTFT {g['slo_ttft_ms'] or '-'} ms, TPOT {g['slo_tpot_ms'] or '-'} ms)")
    if s["errors"]:
        lines.append(f"errors: {s['errors']}")
    return "\n".join(lines)


def records_to_dicts(records: list[RequestRecord]) -> list[dict]:
    return [{k: v for k, v in asdict(r).items() if k != "itl"} | {"tpot": r.tpot} for r in records]
