"""Where a first token waits: the per-hop breakdown of one run served with --trace-first-token (issue 17).

    python benchmarks/first_token_hops.py LOG [LOG ...]     (ferry serve's output, or each process's log)

Every process logs `first-token rid=... hop=... t_us=...` lines (shared/first_token_trace.py); the runner logs
by step id and the scheduler names the step that sampled each request's first token, so its runner hops join
the request. For each hop it prints the median (over requests) of the time since the request's previous hop and
since its first hop, in milliseconds; hops are shown in the order of their median offset.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys

LINE = re.compile(r"first-token (rid|step)=(\S+) hop=(\w+) t_us=(\d+)(?: step=(\d+))?")


def read_hops(lines) -> dict[str, dict[str, int]]:
    """request id -> {hop: t_us}, the runner's step hops joined in through the scheduler's step ids."""
    by_rid: dict[str, dict[str, int]] = {}
    by_step: dict[str, dict[str, int]] = {}
    step_of: dict[str, str] = {}
    for line in lines:
        m = LINE.search(line)
        if m is None:
            continue
        kind, key, hop, t_us, step = m.groups()
        table = by_rid if kind == "rid" else by_step
        table.setdefault(key, {}).setdefault(hop, int(t_us))  # a hop's first time counts
        if kind == "rid" and step is not None and hop == "sched_plan_out":
            step_of[key] = step
    for rid, step in step_of.items():
        for hop, t in by_step.get(step, {}).items():
            by_rid[rid].setdefault(hop, t)
    return by_rid


def breakdown(by_rid: dict[str, dict[str, int]]) -> list[tuple[str, float, float, int]]:
    """(hop, median ms since the previous hop, median ms since the first hop, requests) in path order."""
    offsets: dict[str, list[float]] = {}
    gaps: dict[str, list[float]] = {}
    for hops in by_rid.values():
        ordered = sorted(hops.items(), key=lambda kv: kv[1])
        t0, prev = ordered[0][1], ordered[0][1]
        for hop, t in ordered:
            offsets.setdefault(hop, []).append((t - t0) / 1000)
            gaps.setdefault(hop, []).append((t - prev) / 1000)
            prev = t
    rows = [(hop, statistics.median(gaps[hop]), statistics.median(offs), len(offs)) for hop, offs in offsets.items()]
    return sorted(rows, key=lambda r: r[2])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("logs", nargs="+", help="log files ('-': standard input)")
    ap.add_argument("--skip", type=int, default=0, help="leave out the first N requests (warm-up)")
    args = ap.parse_args(argv)
    lines = []
    for path in args.logs:
        if path == "-":
            lines += sys.stdin.readlines()
        else:
            with open(path, errors="replace") as fh:
                lines += fh.readlines()
    by_rid = read_hops(lines)
    first = sorted(by_rid, key=lambda rid: min(by_rid[rid].values()))[args.skip:]
    by_rid = {rid: by_rid[rid] for rid in first}
    if not by_rid:
        print("no first-token lines: was the server started with --trace-first-token?", file=sys.stderr)
        return 1
    print(f"{len(by_rid)} requests; median ms")
    print(f"{'hop':<20} {'since previous':>15} {'since first':>12} {'requests':>9}")
    for hop, gap, offset, n in breakdown(by_rid):
        print(f"{hop:<20} {gap:>15.3f} {offset:>12.3f} {n:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
