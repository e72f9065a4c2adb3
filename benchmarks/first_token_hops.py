"""Where a first token waits: the per-hop breakdown of one run served with --trace-first-token (issue 17).

    python benchmarks/first_token_hops.py LOG [LOG ...]     (ferry serve's output, or each process's log)
    python benchmarks/first_token_hops.py --drive http://127.0.0.1:8000 --requests 30 LOG

--drive first sends that many streaming /v1/completions requests one after the other (a 5-token prompt of token
ids, 8 tokens out) and adds the client's own hops: client_send (before the request is written) and
client_first_chunk (its first SSE event, text or not), joined by the id the chunks carry.

Every process logs `first-token rid=... hop=... t_us=...` lines (shared/first_token_trace.py); the runner logs
by step id and the scheduler names the step that sampled each request's first token, so its runner hops join
the request. For each hop it prints the median (over requests) of the time since the request's previous hop and
since its first hop, in milliseconds; hops are shown in the order of their median offset.
"""
from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import sys
import time
import urllib.parse

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


def drive(url: str, num_requests: int, prompt: list[int], max_tokens: int) -> list[str]:
    """Send the requests one at a time; the client's hop lines, in the servers' line format."""
    where = urllib.parse.urlsplit(url)
    lines = []
    for _ in range(num_requests):
        conn = http.client.HTTPConnection(where.hostname, where.port or 80, timeout=120)
        body = json.dumps({"model": _model(conn), "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
                           "temperature": 0.0, "stream": True})
        sent = time.time_ns() // 1000
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        first, rid = None, None
        for raw in resp:
            if raw.startswith(b"data: {"):
                if first is None:
                    first, rid = time.time_ns() // 1000, json.loads(raw[6:]).get("id")
        conn.close()
        if rid is None:
            raise SystemExit(f"no chunk came back (HTTP {resp.status})")
        lines += [f"first-token rid={rid} hop=client_send t_us={sent}",
                  f"first-token rid={rid} hop=client_first_chunk t_us={first}"]
    return lines


def _model(conn: http.client.HTTPConnection) -> str:
    conn.request("GET", "/v1/models")
    return json.loads(conn.getresponse().read())["data"][0]["id"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("logs", nargs="+", help="log files ('-': standard input)")
    ap.add_argument("--skip", type=int, default=0, help="leave out the first N requests (warm-up)")
    ap.add_argument("--drive", default="", help="a ferry's URL: send --requests first, timed by the client too")
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--max-tokens", type=int, default=8)
    args = ap.parse_args(argv)
    lines = drive(args.drive, args.requests, [1, 2, 3, 4, 5], args.max_tokens) if args.drive else []
    for path in args.logs:
        if path == "-":
            lines += sys.stdin.readlines()
        else:
            with open(path, errors="replace") as fh:  # read after driving: the servers' lines are there now
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
