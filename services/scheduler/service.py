"""The scheduler process's logic: requests in, plans out, tokens on, liveness of every peer.

The engine Scheduler owns the live requests and the plans in flight; this service owns the runner ranks,
the other peers, the session, health and stats. No sockets here: messages come in through on_message(),
everything leaves through the Outbox, and time is passed in, so tests drive it with fakes.
"""
from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from typing import Callable, Protocol

from services.scheduler.checks import heartbeat_is_plausible, pid_alive, result_is_ours
from services.scheduler.first_token_hops import SchedulerHops
from services.scheduler.process_health import ProcessBook
from shared.codec import pack_ids, unpack_ids
from shared.errors import EngineFailure, FerryError, InvalidParameter, NotReady, ServiceUnavailable
from shared.messages import (
    AbortRequest,
    DetokRegister,
    EngineRequest,
    EngineStats,
    Heartbeat,
    RequestError,
    RunnerReady,
    SchedulerPing,
    StepResult,
    TokenBatch,
    WorkerStatus,
)

log = logging.getLogger("ferry.scheduler")

PROMPT_TAIL = 8  # prompt tokens the detokenizer decodes before the first output (leading spaces)
# Not ready for new requests, but nothing in flight needs a tokenizer: the gateways let open requests run on.
NO_TOKENIZERS = "no tokenizer worker is running"


class Outbox(Protocol):
    def to_runner(self, rank: int, msg) -> bool: ...
    def to_detokenizer(self, msg) -> bool: ...
    def publish(self, stats: EngineStats) -> None: ...


@dataclass(slots=True)
class _Runner:
    instance: str
    num_kv_blocks: int
    last_seen: float


@dataclass(slots=True)
class _Peer:
    last_seen: float
    status: WorkerStatus


class SchedulerService:
    def __init__(self, settings, model_config, make_scheduler: Callable[[int], object], out: Outbox, now: float,
                 hops: SchedulerHops | None = None):
        self.settings = settings
        self.model_config = model_config
        self.make_scheduler = make_scheduler
        self.out = out
        self.world = settings.tensor_parallel_size
        self.runners: dict[int, _Runner] = {}  # ranks that answered this session's pings
        self.pending_runners: dict[int, float] = {}  # ranks heard from, not yet on this session
        self.recent_aborts: dict[str, float] = {}  # aborts that may overtake their request
        self.detokenizer: _Peer | None = None
        self.tokenizers: dict[int, _Peer] = {}
        self.gateways: dict[int, _Peer] = {}  # by gateway id: one that falls silent or restarts loses its requests
        self.dead_gateways: set[int] = set()  # silent ones: requests still on their way for them are dropped
        self.sched = None
        self.session = uuid.uuid4().hex
        self.stalled = False  # nothing to schedule until a result or a request comes in
        self.last_ping = self.last_stats = -1e9
        self.stats_dirty = False
        self.down_reason = "waiting for the runners"
        self.same_host = not settings.run_dir.startswith("tcp://")  # ipc: every peer's pid is on this host
        expected = ([("tokenizer", t) for t in range(settings.num_tokenizers)] + [("detokenizer", 0)]
                    + [("runner", r) for r in range(self.world)])
        self.health = ProcessBook(settings.peer_timeout, self.same_host, expected)  # for /metrics (issue 16)
        self.runner_status: dict[int, object] = {}  # rank -> its last RunnerStatus
        self.last_metrics = -1e9
        self.hops = hops  # issue 17: --trace-first-token's hops, else None

    # ------------------------------------------------------------------ input

    def on_message(self, msg, now: float) -> None:
        if isinstance(msg, (EngineRequest, AbortRequest, StepResult)):
            self.stalled = False
        if isinstance(msg, EngineRequest):
            if self.recent_aborts.pop(msg.request_id, None) is None:
                self._add(msg)
        elif isinstance(msg, AbortRequest):
            if msg.index >= 0:  # one choice: its last output ("abort") comes back through the next step
                if self.sched is not None and self.sched.abort_request(msg.request_id, msg.index):
                    self.stats_dirty |= msg.request_id not in self.sched.requests  # it was the last choice
            elif not self._abort(msg.request_id):
                self.recent_aborts[msg.request_id] = now
        elif isinstance(msg, StepResult):
            self._on_result(msg)
        elif isinstance(msg, RunnerReady):
            self._on_runner(msg, now)
        elif isinstance(msg, Heartbeat):
            if not heartbeat_is_plausible(msg, self.same_host):
                return
            peer = _Peer(now, msg.worker)
            if msg.service == "tokenizer" and msg.worker.id >= 0:  # the gateways address workers by this id
                self.tokenizers[msg.worker.id] = peer
                self.health.heard("tokenizer", msg.worker.id, msg.worker.pid, now)
            elif msg.service == "detokenizer":
                self.detokenizer = peer
                self.health.heard("detokenizer", 0, msg.worker.pid, now)
            elif msg.service == "gateway":
                self._on_gateway(peer)

    def _error(self, rid: str, gateway_id: int, err: FerryError) -> None:
        self.out.to_detokenizer(RequestError.of(rid, gateway_id, err))

    def _add(self, req: EngineRequest) -> None:
        if self.hops is not None:
            self.hops.arrived(req.request_id)
        if req.gateway_id in self.dead_gateways:
            log.info("dropped %s: its gateway %d is gone", req.request_id, req.gateway_id)
            return
        if self.sched is None:
            self._error(req.request_id, req.gateway_id,
                        NotReady(f"the engine is not ready: {self.down_reason}", code="not_ready"))
            return
        ids = unpack_ids(req.prompt_token_ids).tolist()
        try:
            self.sched.add_request(req.request_id, req.gateway_id, ids, req.params)
        except FerryError as e:
            self._error(req.request_id, req.gateway_id, e)
            return
        except Exception as e:  # a request the engine chokes on must not stop the loop
            log.exception("add_request(%s) failed", req.request_id)
            self._error(req.request_id, req.gateway_id, InvalidParameter(f"the engine rejected the request: {e}"))
            return
        p = req.params
        log.debug("%s admitted from gateway %d: %d prompt tokens, n=%d", req.request_id, req.gateway_id, len(ids),
                  p.n)
        # Sent on the same socket as the tokens, so it always arrives first.
        whole = p.echo or p.prompt_logprobs is not None  # the detokenizer shows the prompt's tokens (issue 14)
        tail = pack_ids(ids if whole else ids[-PROMPT_TAIL:])
        self.out.to_detokenizer(DetokRegister(req.request_id, req.gateway_id, p.n, tail, p.stop,
                                              p.include_stop_str_in_output, p.skip_special_tokens, p.logprobs,
                                              p.prompt_logprobs, p.echo, p.logprobs_follow_text))
        if self.hops is not None:
            self.hops.admitted(req.request_id, self.sched.requests[req.request_id].seqs[0].seq_id)

    def _abort(self, rid: str) -> bool:
        """False when the request is not (or no longer) here: it may still be on its way."""
        if self.sched is None or not self.sched.abort_request(rid):
            return False
        if self.hops is not None:
            self.hops.dropped(rid)
        log.debug("%s aborted", rid)
        self.stats_dirty = True
        return True

    def _on_result(self, result: StepResult) -> None:
        if self.sched is None:
            log.warning("dropped a result for step %s (the engine is down)", result.step_id)
            return
        if not result_is_ours(result, self.session):
            return
        if result.error:
            if any(step.step_id == result.step_id for step in self.sched.inflight):
                self.reset(f"runner failed: {result.error}")
            else:
                log.warning("dropped an error for step %s, not in flight: %s", result.step_id, result.error)
            return
        traced = self.hops.result_in(result) if self.hops is not None else None
        num_live = len(self.sched.requests)
        deltas = self.sched.update(result)  # drops a result that does not answer the oldest plan in flight
        if len(self.sched.requests) < num_live:
            self.stats_dirty = True  # a request ended: its blocks are free
        if traced:
            self.hops.tokens_out(traced)
        if deltas:
            self.out.to_detokenizer(TokenBatch(deltas))

    def _on_runner(self, msg: RunnerReady, now: float) -> None:
        if not 0 <= msg.rank < self.world:
            log.warning("ignoring runner rank %d (tensor_parallel_size is %d)", msg.rank, self.world)
            return
        known = self.runners.get(msg.rank)
        if known is not None and known.instance != msg.instance:
            if msg.session != self.session:
                # A restarted rank first hears a ping, then echoes it; until then this may be anyone (a forged
                # frame must not reset a healthy group). Pings go to the rank; a dead old instance goes silent.
                self.pending_runners[msg.rank] = now
                return
            del self.runners[msg.rank]
            self.reset(f"runner rank {msg.rank} restarted")
            return
        if msg.session != self.session:
            # Until it echoes our session it may not hear our plans yet; pings keep going to it.
            self.pending_runners[msg.rank] = now
            return
        if known is None:
            log.info("runner rank %d up (pid %d, %d KV blocks)", msg.rank, msg.pid, msg.num_kv_blocks)
        self.pending_runners.pop(msg.rank, None)
        self.runners[msg.rank] = _Runner(msg.instance, msg.num_kv_blocks, now)
        # health from the beats believed only (of this session): a forged one counts no restart
        self.health.heard("runner", msg.rank, msg.pid, now, msg.instance)
        if msg.status is not None:
            self.runner_status[msg.rank] = msg.status

    # ------------------------------------------------------------------ gateways

    def _on_gateway(self, peer: _Peer) -> None:
        gid = peer.status.id
        known = self.gateways.get(gid)
        if known is not None and known.status.pid != peer.status.pid:
            if self.same_host and pid_alive(known.status.pid):
                # Its process is still there: this beat is not from a restarted gateway but forged or stale.
                log.warning("dropped a beat for gateway %d naming pid %d: pid %d still runs it", gid,
                            peer.status.pid, known.status.pid)
                return
            self._abort_gateway(gid, f"gateway {gid} restarted (pid {known.status.pid} -> {peer.status.pid})")
        elif known is None:
            log.info("gateway %d up (pid %d)", gid, peer.status.pid)
        self.dead_gateways.discard(gid)
        self.gateways[gid] = peer
        self.health.heard("gateway", gid, peer.status.pid, peer.last_seen)

    def _abort_gateway(self, gid: int, why: str) -> None:
        """Nobody reads a dead gateway's answers: end its requests and free their KV blocks now."""
        if self.sched is None:
            return
        rids = [rid for rid, req in self.sched.requests.items() if req.gateway_id == gid]
        # An error each, through the detokenizer: it forgets them, and a gateway that was only slow ends its streams.
        failure = ServiceUnavailable(f"the engine lost gateway {gid} and aborted the request; retry it")
        for rid in rids:
            self.sched.abort_request(rid)
            if self.hops is not None:
                self.hops.dropped(rid)
            self._error(rid, gid, failure)
        log.warning("%s: aborted its %d requests", why, len(rids))
        self.stats_dirty |= bool(rids)

    # ------------------------------------------------------------------ failure

    def reset(self, reason: str) -> None:
        """Fail every request, drop the engine state; a fresh Scheduler starts once all ranks are up."""
        live = self.sched.requests if self.sched is not None else {}
        log.error("engine down: %s; failing %d requests", reason, len(live))
        failure = EngineFailure(f"the engine failed: {reason}")
        for rid, req in live.items():
            self._error(rid, req.gateway_id, failure)
        # Forget the ranks too: /health stays 503 until every rank has joined the new session (the
        # survivors of a broken group exit on seeing it, and their restarted selves sign up again).
        self.runners.clear()
        self.sched = None  # its requests and plans in flight go with it
        self.down_reason = reason
        self.session = uuid.uuid4().hex  # surviving ranks hold stale sequences: they restart
        if self.hops is not None:
            self.hops.forget()
        self.stats_dirty = True

    # ------------------------------------------------------------------ the loop body

    def tick(self, now: float) -> None:
        timeout = self.settings.peer_timeout
        for rank, r in list(self.runners.items()):
            if now - r.last_seen > timeout:
                del self.runners[rank]
                self.reset(f"runner rank {rank} silent for {now - r.last_seen:.1f}s")
        for wid, t in list(self.tokenizers.items()):
            if now - t.last_seen > timeout:
                log.warning("tokenizer %d silent for %.1fs", wid, now - t.last_seen)
                del self.tokenizers[wid]
                self.stats_dirty = True
        for gid, g in list(self.gateways.items()):
            if now - g.last_seen > self.settings.gateway_timeout:
                del self.gateways[gid]
                self.dead_gateways.add(gid)
                self._abort_gateway(gid, f"gateway {gid} silent for {now - g.last_seen:.1f}s")
        for rid, t in list(self.recent_aborts.items()):
            if now - t > 60:
                del self.recent_aborts[rid]
        for rank, t in list(self.pending_runners.items()):
            if now - t > timeout:
                del self.pending_runners[rank]
        if now - self.last_ping >= self.settings.heartbeat_interval:
            self.last_ping = now
            for rank in set(self.runners) | set(self.pending_runners):
                self.out.to_runner(rank, SchedulerPing(self.session))
        if self.sched is None and len(self.runners) == self.world:
            blocks = min(r.num_kv_blocks for r in self.runners.values())
            self.sched = self.make_scheduler(blocks)
            self.down_reason = ""
            self.stats_dirty = True
            log.info("engine ready: %d KV blocks per rank, %d rank(s)", blocks, self.world)
        while self.busy:
            plan = self.sched.schedule()
            if plan is None:
                # Wait for the step in flight (its result may free blocks or finish sequences); with none in
                # flight there is nothing to wait for, so the loop retries at once.
                self.stalled = bool(self.sched.inflight)
                break
            plan.session = self.session  # a runner takes plans of the session it joined only
            if self.hops is not None:
                self.hops.planned(plan)
            for rank in range(self.world):
                if not self.out.to_runner(rank, plan):
                    self.reset(f"runner rank {rank} is not connected")
                    break
        self._maybe_publish(now)

    def not_ready_reason(self, now: float) -> str:
        if self.sched is None:
            return self.down_reason or "waiting for the runners"
        if self.detokenizer is None or now - self.detokenizer.last_seen > self.settings.peer_timeout:
            return "the detokenizer is not running"
        if not self.tokenizers:
            return NO_TOKENIZERS
        return ""

    def _maybe_publish(self, now: float) -> None:
        interval = min(1.0, self.settings.heartbeat_interval)
        # Right after a request ends (freed blocks), but not more than 20 times a second.
        if now - self.last_stats >= interval or (self.stats_dirty and now - self.last_stats >= 0.05):
            self.last_stats, self.stats_dirty = now, False
            reason = self.not_ready_reason(now)
            engine = self.sched.stats() if self.sched is not None else None
            tokenizers = [p.status for p in self.tokenizers.values()]
            active = len(self.sched.requests) if self.sched is not None else 0
            in_flight = len(self.sched.inflight) if self.sched is not None else 0
            stats = EngineStats(not reason, reason, engine, tokenizers, now, self.model_config.max_model_len,
                                active, in_flight)
            self._add_metrics(stats, now)
            self.out.publish(stats)

    def _add_metrics(self, stats: EngineStats, now: float) -> None:
        """What /metrics shows beyond the counters (issue 16): at most once a second (the stats that go out
        right after a request ends carry none: scheduler_pid 0), never per token."""
        if now - self.last_metrics < min(1.0, self.settings.heartbeat_interval):
            return
        self.last_metrics = now
        if self.sched is not None:
            stats.histograms = self.sched.timings.snapshot()
        stats.processes = self.health.snapshot(now)
        stats.runners = [self.runner_status[r] for r in sorted(self.runner_status)]
        live = [h.id for h in stats.processes if h.service == "gateway" and h.up]
        stats.reporter_gateway = min(live) if live else -1
        stats.scheduler_pid = os.getpid()

    @property
    def busy(self) -> bool:
        """A plan can go out now: the loop should not sleep."""
        return self.sched is not None and not self.stalled and self.sched.can_schedule
