"""The scheduler service with the real engine Scheduler (no model: the tests answer its plans themselves)."""
import os

import numpy as np

from engine.model_config import ModelConfig
from engine.scheduler import Scheduler
from services.scheduler.service import SchedulerService
from shared.codec import pack_ids, unpack_ids
from shared.messages import (
    AbortRequest,
    DetokRegister,
    EngineRequest,
    Heartbeat,
    RequestError,
    RunnerReady,
    SchedulerPing,
    StepPlan,
    StepResult,
    TokenBatch,
    WorkerStatus,
)
from shared.sampling_params import SamplingParams
from shared.settings import Settings

SETTINGS = Settings(peer_timeout=5.0, heartbeat_interval=0.5, block_size=4)
CONFIG = ModelConfig.from_hf_dict(dict(vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                       num_attention_heads=1, max_position_embeddings=128, eos_token_id=2))


def answer(plan: StepPlan, token=11) -> StepResult:
    """Rank 0's result for a plan: `token` for each sampled sequence."""
    ids = unpack_ids(plan.seq_ids)[np.frombuffer(plan.sample_mask, np.uint8).astype(bool)].tolist()
    return StepResult(plan.step_id, pack_ids(ids), pack_ids([token] * len(ids)), session=plan.session)


def plans(out) -> list[StepPlan]:
    return [m for _, m in out.runner if isinstance(m, StepPlan)]


def in_flight(svc) -> list[int]:
    return [st.step_id for st in svc.sched.inflight]


class Outbox:
    def __init__(self):
        self.runner, self.detok, self.stats = [], [], []
        self.runner_up = True

    def to_runner(self, rank, msg):
        self.runner.append((rank, msg))
        return self.runner_up

    def to_detokenizer(self, msg):
        self.detok.append(msg)
        return True

    def publish(self, stats):
        self.stats.append(stats)


def make(now=0.0):
    out = Outbox()
    svc = SchedulerService(SETTINGS, CONFIG, lambda blocks: Scheduler(SETTINGS, CONFIG, blocks), out, now)
    return svc, out


def bring_up(svc, out, now=0.0):
    svc.on_message(Heartbeat("tokenizer", WorkerStatus(0, 1)), now)
    svc.on_message(Heartbeat("detokenizer", WorkerStatus(0, os.getpid())), now)
    svc.on_message(RunnerReady(0, 3, 64, "inst-a"), now)  # no session yet: pinged, not used
    svc.tick(now)
    assert svc.sched is None and any(isinstance(m, SchedulerPing) for _, m in out.runner)
    svc.on_message(RunnerReady(0, 3, 64, "inst-a", svc.session), now)
    svc.tick(now)
    assert svc.sched is not None and svc.sched.blocks.num_blocks == 64


def request(rid, n_ids=3, **kw):
    return EngineRequest(rid, 1, pack_ids(list(range(n_ids))), SamplingParams(max_tokens=2, ignore_eos=True, **kw))


def test_not_ready_then_ready():
    svc, out = make()
    svc.on_message(request("early"), 0.0)
    assert isinstance(out.detok[-1], RequestError) and out.detok[-1].status == 503
    bring_up(svc, out)
    svc.tick(0.1)  # stats go out right after a change, at most 20 times a second
    stats = out.stats[-1]
    assert stats.ready and stats.tokenizers == [WorkerStatus(0, 1)] and stats.engine.num_total_blocks > 0
    assert (stats.max_model_len, stats.num_active_requests, stats.steps_in_flight) == (128, 0, 0)


def test_request_runs_to_completion():
    svc, out = make()
    bring_up(svc, out)
    svc.on_message(request("r1"), 0.1)
    reg = out.detok[-1]
    assert isinstance(reg, DetokRegister) and unpack_ids(reg.prompt_tail).tolist() == [0, 1, 2]
    svc.tick(0.1)
    # the second plan (on a placeholder) goes out while the first runs: two in flight, then the loop may sleep
    p0, p1 = plans(out)
    assert in_flight(svc) == [p0.step_id, p1.step_id] and not svc.busy
    svc.on_message(StepResult(7, b"", b"", session=svc.session), 0.15)  # not the oldest outstanding step: dropped
    assert len(svc.sched.inflight) == 2 and not any(isinstance(m, TokenBatch) for m in out.detok)
    svc.on_message(answer(p0, 11), 0.2)
    assert svc.busy
    svc.tick(0.2)
    # r1's last token is on its way: nothing to schedule until it lands
    assert in_flight(svc) == [p1.step_id] and svc.stalled and not svc.busy
    svc.on_message(answer(p1, 12), 0.3)
    batches = [m for m in out.detok if isinstance(m, TokenBatch)]
    assert [(unpack_ids(d.token_ids).tolist(), d.finish_reason) for b in batches for d in b.deltas] == [
        ([11], None), ([12], "length")]
    assert batches[-1].deltas[0].gateway_id == 1 and batches[-1].deltas[0].completion_tokens == 2
    assert "r1" not in svc.sched.requests and svc.stats_dirty
    svc.tick(0.3)  # one more plan: it tells the runners to forget r1's sequence
    forget = plans(out)[-1]
    assert unpack_ids(forget.finished_seq_ids).tolist() == [0] and not svc.busy
    svc.on_message(answer(forget), 0.4)
    assert not svc.sched.inflight and not svc.busy
    svc.tick(1.0)
    stats = out.stats[-1]
    assert stats.num_active_requests == 0 and stats.steps_in_flight == 0 and stats.engine.num_finished == 1


def test_nothing_to_schedule_waits_for_a_message():
    svc, out = make()
    bring_up(svc, out)
    svc.on_message(request("r1"), 0.1)
    svc.tick(0.1)
    assert len(svc.sched.inflight) == 2
    p0, p1 = plans(out)
    svc.on_message(answer(p0), 0.2)
    svc.tick(0.2)
    assert len(svc.sched.inflight) == 1 and not svc.busy  # the loop sleeps in poll() until the result comes
    svc.on_message(request("r2"), 0.25)  # a new request is a reason to try again
    assert svc.busy
    svc.sched.schedule = lambda: None  # e.g. every running sequence waits for its last token
    svc.tick(0.25)
    assert svc.stalled and not svc.busy
    svc.on_message(answer(p1), 0.3)
    assert svc.busy
    svc.tick(0.3)
    assert not svc.sched.inflight and svc.busy  # nothing in flight to wait for: retry rather than hang


def test_error_result_fails_the_engine():
    svc, out = make()
    bring_up(svc, out)
    svc.on_message(request("r1"), 0.1)
    svc.tick(0.1)
    step = svc.sched.inflight[-1].step_id
    # forged or stale: another session, another rank, a step not in flight: logged and dropped
    svc.on_message(StepResult(step, b"", b"", error="forged", session="other"), 0.15)
    svc.on_message(StepResult(step, b"", b"", error="forged", session=svc.session, rank=1), 0.15)
    svc.on_message(StepResult(step + 5, b"", b"", error="forged", session=svc.session), 0.15)
    assert svc.sched is not None and len(svc.sched.inflight) == 2
    svc.on_message(StepResult(step, b"", b"", error="RuntimeError: boom", session=svc.session), 0.2)
    assert svc.sched is None
    err = [m for m in out.detok if isinstance(m, RequestError)][-1]
    assert err.request_id == "r1" and err.status == 503 and "boom" in err.message and err.code == "engine_failure"
    svc.on_message(StepResult(0, b"", b""), 0.3)  # a late result while the engine is down: ignored
    assert svc.sched is None


def test_rejection_and_abort_before_arrival():
    svc, out = make()
    bring_up(svc, out)
    svc.on_message(request("long", 200), 0.1)
    assert out.detok[-1].status == 400 and out.detok[-1].code == "context_length_exceeded"
    svc.on_message(AbortRequest("late"), 0.1)  # the abort overtook its request
    svc.on_message(request("late"), 0.2)
    assert "late" not in svc.sched.requests and "late" not in svc.recent_aborts
    svc.on_message(request("r2", n=2), 0.3)
    svc.on_message(AbortRequest("r2", -1, "stop", 1), 0.3)  # one choice: the request stays until its outputs
    assert svc.sched.num_unfinished("r2") == 1
    svc.tick(0.3)
    svc.on_message(answer(plans(out)[0]), 0.4)
    batch = [m for m in out.detok if isinstance(m, TokenBatch)][-1]
    assert [(d.index, d.finish_reason) for d in batch.deltas] == [(1, "abort"), (0, None)]
    svc.stats_dirty = False
    svc.on_message(AbortRequest("r2"), 0.5)
    assert "r2" not in svc.sched.requests and svc.stats_dirty and "r2" not in svc.recent_aborts
    svc.on_message(AbortRequest("r2"), 0.5)  # again: unknown now, so remembered in case it is on its way
    assert "r2" in svc.recent_aborts
    svc.tick(61.0)
    assert "r2" not in svc.recent_aborts


def test_dead_runner_fails_requests_and_restarts_engine():
    svc, out = make()
    bring_up(svc, out)
    svc.on_message(request("r3"), 0.1)
    svc.on_message(Heartbeat("tokenizer", WorkerStatus(0, 1)), 5.9)
    svc.on_message(Heartbeat("detokenizer", WorkerStatus(0, os.getpid())), 5.9)
    svc.tick(6.0)  # rank 0 last seen at 0.0
    err = [m for m in out.detok if isinstance(m, RequestError)][-1]
    assert err.request_id == "r3" and err.status == 503
    assert svc.sched is None and not out.stats[-1].ready
    # a restarted runner (new instance) joins the new session and the engine comes back
    svc.on_message(RunnerReady(0, 9, 32, "inst-b", svc.session), 6.1)
    svc.tick(6.1)
    assert svc.sched is not None and svc.sched.blocks.num_blocks == 32 and not svc.sched.requests


def test_runner_restart_is_noticed_before_timeout():
    svc, out = make()
    bring_up(svc, out)
    svc.on_message(request("r4"), 0.1)
    old = svc.session
    svc.on_message(RunnerReady(0, 10, 64, "inst-new", old), 0.2)
    assert svc.session != old and svc.sched is None
    assert any(isinstance(m, RequestError) and m.request_id == "r4" for m in out.detok)


def test_forged_runner_ready_and_heartbeats_are_not_believed():
    svc, out = make()
    bring_up(svc, out)
    svc.on_message(request("r5"), 0.1)
    session = svc.session
    # a new instance that never heard this session: maybe anyone; pinged, but the healthy group stays
    svc.on_message(RunnerReady(0, 10, 64, "forged", "other"), 0.2)
    svc.on_message(RunnerReady(0, 10, 64, "forged"), 0.2)
    assert svc.session == session and svc.sched is not None and "r5" in svc.sched.requests
    # heartbeats naming a process that does not exist, or a worker id no gateway can address
    svc.on_message(Heartbeat("tokenizer", WorkerStatus(7, 2 ** 22 + 12345)), 0.3)
    svc.on_message(Heartbeat("tokenizer", WorkerStatus(10 ** 6, 1)), 0.3)
    svc.on_message(Heartbeat("gateway?", WorkerStatus(0, 1)), 0.3)
    assert set(svc.tokenizers) == {0}
    svc.on_message(RunnerReady(0, 3, 64, "inst-a", session), 5.9)
    svc.on_message(Heartbeat("tokenizer", WorkerStatus(0, 1)), 5.9)
    svc.tick(6.0)  # the real detokenizer fell silent: a spoofed beat naming a dead pid does not make it ready
    svc.on_message(Heartbeat("detokenizer", WorkerStatus(0, 2 ** 22 + 12345)), 6.0)
    assert svc.sched is not None and svc.not_ready_reason(6.0) == "the detokenizer is not running"
