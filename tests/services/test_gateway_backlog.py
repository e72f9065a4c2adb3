"""A gateway behind on its reply socket: it reads a whole backlog in batches and yields between them, delivers every
output in order, and does not call the scheduler silent while the scheduler's stats wait in its own socket."""
from __future__ import annotations

import asyncio
import threading
import time

import zmq

from services.gateway.coalesce import merge_deltas, take_queued
from services.gateway.engine_client import OUTPUTS_PER_WAKEUP, EngineClient
from services.gateway.metrics import Metrics
from shared.messages import ChoiceDelta, EngineStats, RequestError, RequestOutput, WorkerStatus
from shared.output_batch import RequestOutputs
from shared.settings import Settings
from shared.sockets import PubSocket, PushSocket, endpoint

STEPS, STREAMS = 400, 50


def _stats():
    return EngineStats(True, "", None, [WorkerStatus(0, 1)])


def _step(k: int) -> RequestOutputs:
    return RequestOutputs(0, [RequestOutput(f"r{i}", 0, [ChoiceDelta(0, f"<{k}>", None, k + 1)])
                              for i in range(STREAMS)])


def test_a_backlog_is_read_in_batches_with_the_loop_free_between_them_and_nothing_lost(tmp_path):
    settings = Settings(run_dir=str(tmp_path), peer_timeout=5.0, heartbeat_interval=0.5)
    ctx = zmq.Context()

    async def scenario():
        client = EngineClient(settings, Metrics(0))
        queues = {f"r{i}": asyncio.Queue() for i in range(STREAMS)}
        for rid, q in queues.items():
            client.runs[rid] = (q, 0)
        push = PushSocket(ctx, endpoint(settings, "gateway", 0))
        for k in range(STEPS):  # the whole backlog waits before the reader starts
            push.send(_step(k))
        push.send(RequestOutput("gone", 0, [ChoiceDelta(0, "x")]))  # a single output, for a request not open
        await asyncio.sleep(0.2)
        ticks = []

        async def other_task():  # what the HTTP handlers, the stats reader and the watchdog are
            while sum(q.qsize() for q in queues.values()) < STEPS * STREAMS:
                ticks.append(sum(q.qsize() for q in queues.values()))
                await asyncio.sleep(0)

        client.start()
        try:
            await asyncio.wait_for(other_task(), 10)
        finally:
            await client.stop()
            push.close()
        # the other task ran between batches, not only after the whole backlog: at least one wake-up per batch
        assert len([t for t in ticks if 0 < t < STEPS * STREAMS]) >= STEPS * STREAMS // OUTPUTS_PER_WAKEUP - 1
        for q in queues.values():
            texts = [q.get_nowait()[1].choices[0].text for _ in range(STEPS)]
            assert texts == [f"<{k}>" for k in range(STEPS)]  # every step's output, in order
        assert "gone" not in client.runs

    try:
        asyncio.run(scenario())
    finally:
        ctx.destroy(0)


def test_a_busy_gateway_with_stats_queued_is_not_told_the_scheduler_is_silent(tmp_path):
    settings = Settings(run_dir=str(tmp_path), peer_timeout=0.5, heartbeat_interval=0.1)
    ctx = zmq.Context()
    pub = PubSocket(ctx, endpoint(settings, "stats"))
    stop = threading.Event()

    def scheduler():  # publishes every 50 ms, whatever the gateway is doing
        while not stop.is_set():
            pub.send(_stats())
            time.sleep(0.05)

    async def scenario():
        client = EngineClient(settings, Metrics(0))
        client.start()
        try:
            deadline = time.monotonic() + 5
            while client.stats is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert client.pipeline_problem() is None
            time.sleep(settings.peer_timeout * 3)  # the loop is busy (a backlog of outputs): nothing is read
            assert time.monotonic() - client.stats_at > settings.peer_timeout
            assert client.stats_in.waiting()
            assert client.pipeline_problem() is None  # the scheduler spoke; the gateway was the one behind
            await asyncio.sleep(0.1)
            assert time.monotonic() - client.stats_at < settings.peer_timeout  # the reader caught up
            stop.set()
            await asyncio.sleep(settings.peer_timeout + 0.3)  # now the scheduler is really silent
            assert not client.stats_in.waiting()
            assert client.pipeline_problem().startswith("no word from the scheduler for ")
        finally:
            await client.stop()

    beat = threading.Thread(target=scheduler, daemon=True)
    beat.start()
    try:
        asyncio.run(scenario())
    finally:
        stop.set()
        beat.join(2)
        pub.close()
        ctx.destroy(0)


def test_queued_outputs_merge_into_one_delta_per_choice_and_stop_at_an_error():
    async def scenario():
        q: asyncio.Queue = asyncio.Queue()
        seen = []
        for k in range(3):
            q.put_nowait((0, RequestOutput("r", 0, [ChoiceDelta(0, f"a{k}", None, k + 1, [], bytes([k]) * 4),
                                                    ChoiceDelta(1, f"b{k}", "length" if k == 2 else None, k + 1)])))
        err = RequestError("r", 0, 503, "gone", "service_unavailable")
        q.put_nowait((0, err))
        q.put_nowait((0, RequestOutput("r", 0, [ChoiceDelta(0, "late")])))
        batch = [await q.get()]
        seen.append(batch[0])
        assert take_queued(q, lambda i, m: seen.append((i, m)), batch) is err
        assert len(batch) == 3 and len(seen) == 4 and q.qsize() == 1  # the error observed, not batched
        placed = [(d.index, d, 10 * d.index) for _, out in batch for d in out.choices]
        merged = merge_deltas(placed)
        assert [(ci, d.text, d.finish_reason, d.completion_tokens, off) for ci, d, off in merged] == [
            (0, "a0a1a2", None, 3, 0), (1, "b0b1b2", "length", 3, 10)]
        assert merged[0][1].token_ids == bytes([0]) * 4 + bytes([1]) * 4 + bytes([2]) * 4
        assert merge_deltas(placed[:1]) == placed[:1]

    asyncio.run(scenario())
