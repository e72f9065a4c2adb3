"""Liveness that blames the right party: heartbeats on their own thread, the scheduler watching gateways, a slow
step that is not a dead runner, the gateway's watchdog failing only stranded requests."""
from __future__ import annotations

import asyncio
import os
import time

import zmq

from engine.model_config import ModelConfig
from engine.scheduler import Scheduler
from services.gateway.engine_client import EngineClient
from services.gateway.metrics import Metrics
from services.heartbeat import start_heartbeat
from services.scheduler.service import NO_TOKENIZERS, SchedulerService
from shared.codec import pack_ids
from shared.messages import (
    EngineRequest,
    EngineStats,
    Heartbeat,
    RequestError,
    RunnerReady,
    StepPlan,
    WorkerStatus,
)
from shared.sampling_params import SamplingParams
from shared.settings import Settings
from shared.sockets import PullSocket, endpoint

SETTINGS = Settings(peer_timeout=5.0, heartbeat_interval=0.5, gateway_timeout=1.2, block_size=4)
CONFIG = ModelConfig.from_hf_dict(dict(vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                       num_attention_heads=1, max_position_embeddings=128, eos_token_id=2))


class Outbox:
    def __init__(self):
        self.runner, self.detok, self.stats = [], [], []

    def to_runner(self, rank, msg):
        self.runner.append((rank, msg))
        return True

    def to_detokenizer(self, msg):
        self.detok.append(msg)
        return True

    def publish(self, stats):
        self.stats.append(stats)


def ready_scheduler():
    out = Outbox()
    svc = SchedulerService(SETTINGS, CONFIG, lambda blocks: Scheduler(SETTINGS, CONFIG, blocks), out, 0.0)
    svc.same_host = False  # these tests name made-up pids; the live-pid check is tested in test_forged_frames
    svc.on_message(RunnerReady(0, 3, 64, "inst-a"), 0.0)
    svc.on_message(RunnerReady(0, 3, 64, "inst-a", svc.session), 0.0)
    beat(svc, 0.0)
    svc.tick(0.0)
    assert svc.sched is not None
    return svc, out


def beat(svc, now, gateways=(), runner=True):
    """Every peer but the gateways not listed says it is alive at `now`."""
    svc.on_message(Heartbeat("tokenizer", WorkerStatus(0, 1)), now)
    svc.on_message(Heartbeat("detokenizer", WorkerStatus(0, 2)), now)
    if runner:
        svc.on_message(RunnerReady(0, 3, 64, "inst-a", svc.session), now)
    for gid, pid in gateways:
        svc.on_message(Heartbeat("gateway", WorkerStatus(gid, pid)), now)


def request(rid, gateway_id, max_tokens=50):
    return EngineRequest(rid, gateway_id, pack_ids([5, 6, 7, 8, 9]),
                         SamplingParams(max_tokens=max_tokens, ignore_eos=True))


def used_blocks(svc):
    return svc.sched.blocks.num_blocks - svc.sched.stats().num_free_blocks


# ---------------------------------------------------------------- heartbeats on their own thread


def test_the_heartbeat_thread_beats_while_the_main_thread_is_busy(tmp_path):
    """A slow chat template holds the main thread in Python code: the beats go on."""
    ctx = zmq.Context()
    addr = f"ipc://{tmp_path}/scheduler"
    inbox = PullSocket(ctx, addr, expect=Heartbeat)
    thread = start_heartbeat(ctx, addr, lambda: Heartbeat("tokenizer", WorkerStatus(0, 1)), 0.1)
    try:
        end = time.monotonic() + 1.0
        spins = 0
        while time.monotonic() < end:  # "rendering": pure Python, holding the GIL between switches
            spins += 1
        time.sleep(0.05)  # the last beat lands
        beats = inbox.drain()
        assert len(beats) >= 5, len(beats)  # ten due in that second
    finally:
        thread.stop()
        thread.join(1.0)
        inbox.close()
        ctx.term()


# ---------------------------------------------------------------- the scheduler watches each gateway


def test_a_silent_gateway_loses_its_requests_and_their_blocks():
    svc, out = ready_scheduler()
    beat(svc, 0.0, gateways=[(1, 100), (2, 200)])
    svc.on_message(request("dead-a", 1), 0.0)
    svc.on_message(request("dead-b", 1), 0.0)
    svc.on_message(request("alive", 2), 0.0)
    svc.tick(0.0)
    before = used_blocks(svc)
    assert before > 0
    now = 0.0
    while now < 1.0:  # gateway 1 silent, gateway 2 beating: nothing happens before gateway_timeout
        now += 0.25
        beat(svc, now, gateways=[(2, 200)])
        svc.tick(now)
    assert set(svc.sched.requests) == {"dead-a", "dead-b", "alive"}
    beat(svc, 1.5, gateways=[(2, 200)])
    svc.tick(1.5)  # gateway 1 silent for 1.5 s > gateway_timeout
    assert set(svc.sched.requests) == {"alive"}
    assert 0 < used_blocks(svc) < before  # the dead gateway's blocks are free at once
    errors = [m for m in out.detok if isinstance(m, RequestError)]  # the detokenizer forgets them
    assert sorted((e.request_id, e.gateway_id, e.status) for e in errors) == [("dead-a", 1, 503), ("dead-b", 1, 503)]
    assert svc.stats_dirty or out.stats[-1].num_active_requests == 1
    # what is still on its way for the dead gateway is dropped; it comes back with a beat
    svc.on_message(request("late", 1), 1.6)
    assert "late" not in svc.sched.requests
    beat(svc, 1.7, gateways=[(1, 101), (2, 200)])
    svc.on_message(request("new", 1), 1.7)
    assert "new" in svc.sched.requests


def test_a_restarted_gateway_loses_what_its_old_self_asked():
    svc, _ = ready_scheduler()
    beat(svc, 0.0, gateways=[(0, 100)])
    svc.on_message(request("old", 0), 0.0)
    svc.tick(0.0)
    assert used_blocks(svc) > 0
    beat(svc, 0.3, gateways=[(0, 555)])  # same id, new pid
    assert "old" not in svc.sched.requests and used_blocks(svc) == 0
    svc.on_message(request("new", 0), 0.3)
    assert "new" in svc.sched.requests


def test_a_beat_naming_another_pid_while_the_gateway_still_runs_is_dropped():
    """A forged (or stale) gateway beat must not pass for a restart while the real gateway's process lives."""
    svc, _ = ready_scheduler()
    svc.same_host = True
    live, other = os.getpid(), os.getppid()
    beat(svc, 0.0, gateways=[(0, live)])
    svc.on_message(request("kept", 0), 0.0)
    svc.tick(0.0)
    beat(svc, 0.3, gateways=[(0, other)])  # both pids alive: not a restart
    assert "kept" in svc.sched.requests and svc.gateways[0].status.pid == live


def test_a_gateway_never_heard_from_is_not_judged():
    """Gateways that do not beat (an older build, a test client) keep their requests."""
    svc, _ = ready_scheduler()
    svc.on_message(request("r", 7), 0.0)
    for i in range(1, 20):
        beat(svc, i * 0.5)
        svc.tick(i * 0.5)
    assert "r" in svc.sched.requests


# ---------------------------------------------------------------- a slow step is not a dead runner


def test_a_long_step_with_the_runner_beating_is_no_reset():
    """A step that takes three peer timeouts: the runner's heartbeat thread beats on, the scheduler waits."""
    svc, out = ready_scheduler()
    session = svc.session
    svc.on_message(request("r", 0), 0.0)
    svc.tick(0.0)
    sent = [m for _, m in out.runner if isinstance(m, StepPlan)]
    assert sent and svc.sched.inflight
    now = 0.0
    while now < 3 * SETTINGS.peer_timeout:
        now += SETTINGS.heartbeat_interval
        beat(svc, now)
        svc.tick(now)
    assert svc.session == session and svc.sched is not None and "r" in svc.sched.requests
    assert not any(isinstance(m, RequestError) for m in out.detok)
    assert out.stats[-1].ready
    # the same silence without heartbeats is a dead runner
    beat(svc, now, runner=False)
    svc.tick(now + SETTINGS.peer_timeout + 0.1)
    assert svc.session != session


# ---------------------------------------------------------------- the gateway's watchdog


def _stats(ready=True, reason=""):
    return EngineStats(ready, reason, None, [WorkerStatus(0, 1)])


def test_the_watchdog_fails_nothing_while_answers_flow_and_stranded_requests_when_they_stop(tmp_path):
    settings = Settings(run_dir=str(tmp_path), peer_timeout=0.6, heartbeat_interval=0.1, gateway_timeout=10.0)

    async def scenario():
        client = EngineClient(settings, Metrics(0))
        client.start()
        try:
            queues = {rid: asyncio.Queue() for rid in ("a", "b")}
            for rid, q in queues.items():
                client.runs[rid] = (q, 0)
            # the scheduler's stats are late (the pipeline looks not ready), but replies keep arriving
            client.stats, client.stats_at = _stats(), time.monotonic() - 10
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                client.last_reply_at = time.monotonic()
                await asyncio.sleep(0.05)
            assert all(q.empty() for q in queues.values()) and set(client.runs) == {"a", "b"}
            # the engine is really gone: no reply for peer_timeout, so every stranded request ends with a 503
            end = time.monotonic() + 2.0
            while client.runs and time.monotonic() < end:
                await asyncio.sleep(0.05)
            assert not client.runs
            for q in queues.values():
                _, err = q.get_nowait()
                assert isinstance(err, RequestError) and err.status == 503
                assert "no word from the scheduler" in err.message
            # no tokenizer worker and no reply for long: what is open is past the tokenizers, it runs on
            client.stats, client.stats_at = _stats(False, NO_TOKENIZERS), time.monotonic()
            client.runs["d"] = (asyncio.Queue(), 0)
            client.last_reply_at = time.monotonic() - 10
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                client.stats_at = time.monotonic()
                await asyncio.sleep(0.05)
            assert "d" in client.runs
            del client.runs["d"]
            # a fresh request on a ready pipeline is left alone, whatever the reply clock says
            client.stats, client.stats_at = _stats(), time.monotonic()
            client.runs["c"] = (asyncio.Queue(), 0)
            await asyncio.sleep(0.3)
            client.stats_at = time.monotonic()
            await asyncio.sleep(0.5)
            assert "c" in client.runs
        finally:
            await client.stop()

    asyncio.run(scenario())


def test_draining_answers_503_and_ends_what_is_left(tmp_path):
    from services.gateway.drain import drain

    settings = Settings(run_dir=str(tmp_path), peer_timeout=5.0, heartbeat_interval=0.1)

    async def scenario():
        client = EngineClient(settings, Metrics(0))
        client.start()
        worker = _bind_tokenizer(settings)
        try:
            client.stats, client.stats_at = _stats(), time.monotonic()
            await _until_ready(client)
            q = asyncio.Queue()
            client.runs["slow"] = (q, 0)
            ended = await drain(client, 0.3)
            assert ended == 1 and client.not_ready_reason() == "the server is shutting down"
            _, err = q.get_nowait()
            assert isinstance(err, RequestError) and err.status == 503 and "shutting down" in err.message
            client.runs["quick"] = (asyncio.Queue(), 0)
            asyncio.get_running_loop().call_later(0.1, client.runs.pop, "quick")
            assert await drain(client, 5.0) == 0  # it finished in time: nothing to end
        finally:
            await client.stop()
            worker.close(0)

    asyncio.run(scenario())


def _bind_tokenizer(settings):
    """Tokenizer worker 0's inbox, bound: the gateway's socket to it connects a moment later."""
    sock = zmq.Context.instance().socket(zmq.PULL)
    sock.bind(endpoint(settings, "tokenizer", 0))
    return sock


async def _until_ready(client, timeout=5.0):
    deadline = time.monotonic() + timeout
    while client.not_ready_reason() is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert client.not_ready_reason() is None


def test_health_waits_until_a_tokenizer_worker_is_connected(tmp_path):
    # The engine is ready but no worker's socket is up yet (a worker starting or restarting): a request now
    # would be a 503 "no tokenizer worker is available", so /health must not say yes either.
    settings = Settings(run_dir=str(tmp_path), peer_timeout=5.0, heartbeat_interval=0.1)

    async def scenario():
        client = EngineClient(settings, Metrics(0))
        client.start()
        try:
            client.stats, client.stats_at = _stats(), time.monotonic()
            await asyncio.sleep(0.3)
            assert client.not_ready_reason() == "no tokenizer worker is connected"
            assert client.pipeline_problem() is None  # requests past the tokenizers are not failed for it
            worker = _bind_tokenizer(settings)
            try:
                await _until_ready(client)
            finally:
                worker.close(0)
            deadline = time.monotonic() + 5
            while client.not_ready_reason() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert client.not_ready_reason() == "no tokenizer worker is connected"  # gone again
        finally:
            await client.stop()

    asyncio.run(scenario())



def test_a_stale_socket_file_from_an_earlier_run_is_replaced(tmp_path):
    """A run killed hard leaves its ipc files; the next run binds over them and is heard."""
    from shared.sockets import PushSocket

    (tmp_path / "scheduler").write_bytes(b"stale")
    ctx = zmq.Context()
    addr = f"ipc://{tmp_path}/scheduler"
    inbox = PullSocket(ctx, addr, expect=Heartbeat)
    out = PushSocket(ctx, addr)
    try:
        out.send(Heartbeat("gateway", WorkerStatus(0, 1)))
        assert inbox.recv(timeout=5.0) == Heartbeat("gateway", WorkerStatus(0, 1))
    finally:
        out.close()
        inbox.close()
        ctx.term()
