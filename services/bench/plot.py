"""Latency against load, as a PNG, when matplotlib is importable (it is not a dependency of ferry)."""
from __future__ import annotations

from services.bench.stats import RequestRecord, concurrency_at_start


def plot_latency_vs_load(runs: list[dict], records_by_run: list[list[RequestRecord]], path: str) -> str | None:
    """Left: p50/p99 TTFT and TPOT against achieved requests/s, one point per run. Right: each request's
    TPOT and TTFT against the requests in flight when it was sent. Returns None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    order = sorted(range(len(runs)), key=lambda i: runs[i]["summary"]["request_throughput"])
    x = [runs[i]["summary"]["request_throughput"] for i in order]
    for key, style in (("ttft_ms", "o-"), ("tpot_ms", "s--")):
        for p in ("p50", "p99"):
            ax1.plot(x, [runs[i]["summary"][key][p] for i in order], style, label=f"{key[:-3].upper()} {p}")
    for i in order:
        ax1.annotate(runs[i]["name"], (runs[i]["summary"]["request_throughput"], runs[i]["summary"]["tpot_ms"]["p50"]),
                     fontsize=7)
    ax1.set(xlabel="achieved requests/s", ylabel="ms", yscale="log", title="latency against load")
    ax1.legend(fontsize=8)
    for run, recs in zip(runs, records_by_run):
        ok = [r for r in recs if r.ok and r.tpot is not None]
        if not ok:
            continue
        conc = concurrency_at_start(ok)
        ax2.scatter(conc, [r.tpot * 1e3 for r in ok], s=4, alpha=0.5, label=f"{run['name']} TPOT")
    ax2.set(xlabel="requests in flight at send", ylabel="TPOT ms", title="per request")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
