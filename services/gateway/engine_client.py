"""The gateway's side of the pipeline: sends requests to tokenizer workers, aborts to the
scheduler, and routes replies and stats that come back to it. A tokenizer worker that dies fails
the requests it held (services/gateway/tokenizer_pool.py)."""
from __future__ import annotations

import asyncio
import logging
import os
import time

import zmq
import zmq.asyncio

from services.gateway.metrics import Metrics
from services.gateway.tokenizer_pool import TokenizerPool
from services.heartbeat import start_heartbeat
from services.scheduler.service import NO_TOKENIZERS
from shared.errors import NotReady, ServiceUnavailable
from shared.first_token_trace import first_token_trace
from shared.messages import (
    AbortRequest,
    EngineStats,
    Heartbeat,
    RequestError,
    RequestOutput,
    Tokenized,
    TokenizeReply,
    TokenizeRequest,
    WorkerStatus,
)
from shared.output_batch import RequestOutputs
from shared.sockets import AsyncPullSocket, AsyncPushSocket, endpoint

log = logging.getLogger("ferry.gateway")
REPLY_FRAMES_PER_WAKEUP = 64  # frames taken off the reply socket at once (a step's outputs each, or one reply)
# Outputs handed to their requests before the loop is let go: a few steps of a thousand streams, so a backlog
# reaches the handlers in few wake-ups (each stream's outputs then leave as one chunk) and nothing else waits long.
OUTPUTS_PER_WAKEUP = 4096


class EngineClient:
    def __init__(self, settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.ctx = zmq.asyncio.Context()
        gid = settings.gateway_id
        self.replies = AsyncPullSocket(self.ctx, endpoint(settings, "gateway", gid),
                                       (RequestOutputs, RequestOutput, RequestError, Tokenized,
                                        TokenizeReply))
        self.stats_in = AsyncPullSocket(self.ctx, endpoint(settings, "stats"), EngineStats, bind=False, kind=zmq.SUB)
        # One socket per worker, IMMEDIATE: a worker that is not up takes nothing (the pool tries the next one).
        self.worker_socks: dict[int, AsyncPushSocket] = {}
        self.pool = TokenizerPool(lambda wid, msg: self._worker_socket(wid).send(msg), range(settings.num_tokenizers))
        for wid in self.pool.workers:
            self._worker_socket(wid)
        self.scheduler = AsyncPushSocket(self.ctx, endpoint(settings, "scheduler"))
        self.runs: dict[str, tuple[asyncio.Queue, int]] = {}  # request id -> (its queue, prompt index)
        self.pending: set[str] = set()  # submitted, no output yet: waiting, for admission control
        self.stats: EngineStats | None = None
        self.stats_at = 0.0
        self.started_at = time.monotonic()
        self.tasks: list[asyncio.Task] = []
        self.watched: dict[str, float] = {}  # open request id -> when the watchdog first saw it
        self.last_reply_at = time.monotonic()  # any reply for any request: the pipeline is moving
        self.draining = False  # SIGTERM: no new requests (services/gateway/drain.py)
        self.heartbeat = None
        self.trace = first_token_trace(settings, log)  # issue 17: --trace-first-token, else None

    def _worker_socket(self, wid: int) -> AsyncPushSocket:
        sock = self.worker_socks.get(wid)
        if sock is None:
            sock = self.worker_socks[wid] = AsyncPushSocket(self.ctx, endpoint(self.settings, "tokenizer", wid),
                                                            immediate=True)
        return sock

    def start(self):
        self.tasks = [asyncio.create_task(f()) for f in (self._reply_loop, self._stats_loop, self._watchdog)]
        self._start_heartbeat()

    def _start_heartbeat(self):
        """The scheduler aborts this gateway's requests when it falls silent (or restarts). The beat runs on its
        own thread and socket, so a busy event loop does not look like a dead gateway."""
        beat = Heartbeat("gateway", WorkerStatus(self.settings.gateway_id, os.getpid()))
        self.heartbeat_ctx = zmq.Context()
        interval = min(self.settings.heartbeat_interval, self.settings.gateway_timeout / 4)
        self.heartbeat = start_heartbeat(self.heartbeat_ctx, endpoint(self.settings, "scheduler"), lambda: beat,
                                         interval)

    async def stop(self):
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat.join(1.0)
            self.heartbeat_ctx.destroy(0)
        self.ctx.destroy(0)

    def not_ready_reason(self) -> str | None:
        """None when the pipeline can take requests, else why not (for /health and 503s)."""
        if self.draining:
            return "the server is shutting down"
        problem = self.pipeline_problem()
        # A worker's socket connects a moment after the worker starts (or restarts): until one is, /health must not
        # say yes to a request that would get "no tokenizer worker is available" (requests already past the
        # tokenizers are the watchdog's, which looks at pipeline_problem alone).
        if problem is None and not any(self._worker_socket(wid).connected() for wid in self.pool.workers):
            return "no tokenizer worker is connected"
        return problem

    def pipeline_problem(self) -> str | None:
        """What is wrong with the processes behind this gateway, if anything."""
        if self.stats is None:
            return "waiting for the scheduler"
        age = time.monotonic() - self.stats_at
        # Stats queued in this gateway's own socket are word from the scheduler: the gateway is the one behind.
        if age > self.settings.peer_timeout and not self.stats_in.waiting():
            return f"no word from the scheduler for {age:.1f}s"
        if not self.stats.ready:
            return self.stats.reason or "the engine is not ready"
        return None

    def submit(self, req: TokenizeRequest, queue: asyncio.Queue, prompt_index: int = 0):
        reason = self.not_ready_reason()
        if reason:
            raise NotReady(f"the server is not ready: {reason}")
        if self.trace is not None:
            self.trace.hop(req.request_id, "gw_in")
        self.runs[req.request_id] = (queue, prompt_index)
        self.pending.add(req.request_id)
        if not self.pool.send(req.request_id, req):
            self.runs.pop(req.request_id, None)
            self.pending.discard(req.request_id)
            raise NotReady("no tokenizer worker is available")

    def num_pending(self) -> int:
        """Requests submitted through this gateway that have produced no output yet."""
        return len(self.pending)

    def release(self, request_id: str, abort: bool):
        """The handler is done with a request; abort it in the engine unless it finished."""
        self.pool.passed_on(request_id)
        self.pending.discard(request_id)
        if self.runs.pop(request_id, None) is not None and abort:
            self.scheduler.send(AbortRequest(request_id, self.settings.gateway_id, "client"))

    async def _reply_loop(self):
        while True:
            batch = await self.replies.recv_batch(REPLY_FRAMES_PER_WAKEUP)
            if batch:  # malformed frames alone are no sign of life
                self.last_reply_at = time.monotonic()
            budget = OUTPUTS_PER_WAKEUP
            for msg in batch:
                if type(msg) is RequestOutputs:
                    for out in msg.outputs:
                        self._deliver(out)
                    budget -= len(msg.outputs)
                else:
                    self._deliver(msg)
                    budget -= 1
                if budget <= 0:  # a long backlog: the handlers, the stats reader and the watchdog run meanwhile
                    await asyncio.sleep(0)
                    budget = OUTPUTS_PER_WAKEUP
            # With frames queued, awaiting the socket would not yield: yield here, backlog or not.
            await asyncio.sleep(0)

    def _deliver(self, msg):
        rid = msg.request_id
        self.pool.passed_on(rid)
        if type(msg) is Tokenized:
            return
        if self.trace is not None and rid in self.pending:  # its first output
            self.trace.hop(rid, "gw_reply_in")
        self.pending.discard(rid)
        entry = self.runs.get(rid)
        if entry is not None:  # else: the client is gone already
            entry[0].put_nowait((entry[1], msg))

    async def _stats_loop(self):
        while True:
            msg: EngineStats = await self.stats_in.recv()
            self.stats, self.stats_at = msg, time.monotonic()
            try:
                self.metrics.update_engine(msg)
                for rid in self.pool.on_stats(msg.tokenizers):
                    self._fail(rid, "the tokenizer worker that held the request stopped; retry it")
                for wid in self.pool.workers:  # workers started beyond num_tokenizers join the rotation
                    self._worker_socket(wid)
            except Exception:
                log.exception("bad stats message")

    async def _watchdog(self):
        """End the open requests that a dead peer has stranded, and only those.

        A request fails when the pipeline is not ready AND nothing has come back for any request for
        peer_timeout (replies queued unread have come) AND the request itself is that old: a late stats
        message, or a detokenizer or scheduler late by a little, fails nothing while answers still flow, and
        no tokenizer worker running strands nothing open (what a dead worker held, TokenizerPool fails). The
        scheduler fails its own requests when it resets the engine (a RequestError each); a dead tokenizer
        worker fails only what it held (TokenizerPool). A round after this loop itself was held up is
        skipped: the readers first
        catch up with what arrived meanwhile."""
        was_ready = False
        interval = self.settings.heartbeat_interval / 2
        timeout = self.settings.peer_timeout
        woke = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now, late = time.monotonic(), time.monotonic() - woke - interval
            woke = now
            reason = self.pipeline_problem()
            self.metrics.ready.set(0 if self.not_ready_reason() else 1)
            if reason and was_ready:
                log.error("pipeline not ready: %s", reason)
            was_ready = reason is None
            if reason == NO_TOKENIZERS:
                reason = None  # what is open is past the tokenizers (TokenizerPool fails what a worker held)
            for rid in [r for r in self.watched if r not in self.runs]:
                del self.watched[rid]
            for rid in self.runs:
                self.watched.setdefault(rid, now)
            if not reason or late > interval or now - self.last_reply_at <= timeout or self.replies.waiting():
                continue
            for rid, seen in list(self.watched.items()):
                if now - seen > timeout:
                    self._fail(rid, f"the server failed while answering: {reason}")

    def end(self, rid: str, message: str):
        """End an open request now (draining at shutdown): a 503 error, aborted in the engine."""
        self._fail(rid, message)

    def _fail(self, rid: str, message: str):
        """End an open request with a 503 and abort it in the engine, should it have got that far."""
        entry = self.runs.get(rid)
        if entry is None:
            return
        entry[0].put_nowait((entry[1], RequestError.of(rid, self.settings.gateway_id, ServiceUnavailable(message))))
        self.release(rid, abort=True)
