"""The HTTP side: many concurrent streaming /v1/completions requests through aiohttp, timed per chunk."""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from services.bench.stats import RequestRecord
from services.bench.workload import BenchRequest


async def served_model(session: aiohttp.ClientSession, base_url: str) -> str:
    async with session.get(base_url + "/v1/models") as r:
        r.raise_for_status()
        return (await r.json())["data"][0]["id"]


async def one_request(session: aiohttp.ClientSession, url: str, model: str, req: BenchRequest,
                      rec: RequestRecord, t0: float) -> RequestRecord:
    body = {"model": model, "prompt": req.prompt, "max_tokens": req.output_len, "ignore_eos": True,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    rec.start = sent - t0
    last = None
    chunks = 0
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                rec.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return rec
            async for line in resp.content:  # one SSE line at a time
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    break
                now = time.perf_counter()
                msg = json.loads(data)
                if "error" in msg:
                    rec.error = str(msg["error"].get("message", msg["error"]))[:200]
                    break
                if msg.get("usage"):
                    rec.output_tokens = msg["usage"]["completion_tokens"]
                if not any(c.get("text") for c in msg.get("choices") or ()):
                    continue
                chunks += 1
                if last is None:
                    rec.ttft = now - sent
                else:
                    rec.itl.append(now - last)
                last = now
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        rec.error = f"{type(e).__name__}: {e}"[:200]
    rec.latency = time.perf_counter() - sent
    if not rec.output_tokens:
        rec.output_tokens = chunks
    if not rec.error and last is None:
        rec.error = "no tokens streamed"
    return rec


async def run_load(base_url: str, requests: list[BenchRequest], send_times: list[float],
                   progress=None, timeout: float = 6 * 3600,
                   max_concurrency: int = 0) -> tuple[list[RequestRecord], float, str]:
    """Send each request at its time (seconds after the start); returns (records, wall seconds, model).
    max_concurrency > 0: a request due while that many are open waits for one to end (closed-loop load, as
    vLLM's --max-concurrency); its TTFT counts from when it is sent, not from when it was due."""
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    tmo = aiohttp.ClientTimeout(total=timeout, sock_connect=60)
    async with aiohttp.ClientSession(connector=connector, timeout=tmo, read_bufsize=2**16) as session:
        model = await served_model(session, base_url)
        url = base_url + "/v1/completions"
        records = [RequestRecord(len(r.prompt), r.output_len) for r in requests]
        t0 = time.perf_counter()
        gate = asyncio.Semaphore(max_concurrency) if max_concurrency > 0 else None

        async def fire(i: int):
            delay = send_times[i] - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            if gate is None:
                await one_request(session, url, model, requests[i], records[i], t0)
            else:
                async with gate:
                    await one_request(session, url, model, requests[i], records[i], t0)
            if progress is not None:
                progress.update(1)

        await asyncio.gather(*(fire(i) for i in range(len(requests))))
        return records, time.perf_counter() - t0, model
