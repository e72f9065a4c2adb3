from dataclasses import dataclass

from shared.codec import pack_ids, unpack_ids
from shared.errors import PromptTooLong
from shared.messages import (AbortRequest, DetokRegister, EngineRequest, Heartbeat, RequestError, RunnerReady,
                             SchedulerCounters, SchedulerPing, StepPlan, StepResult, TokenBatch, WorkerStatus)
from shared.sampling_params import SamplingParams
from shared.settings import Settings
from services.scheduler.service import SchedulerService


@dataclass
class Out:
    request_id: str
    gateway_id: int
    index: int
    new_token_ids: list
    finish_reason: str | None
    logprobs: list
    prompt_tokens: int = 3
    completion_tokens: int = 1
    cached_tokens: int = 0


class FakeScheduler:
    """Runs every request for two steps; the second finishes it."""

    def __init__(self, blocks):
        self.blocks, self.reqs, self.steps, self.aborted = blocks, {}, 0, []

    def add_request(self, rid, gid, ids, params):
        if len(ids) > 100:
            raise PromptTooLong("too long")
        self.reqs[rid] = [gid, 0]

    def abort_request(self, rid, index=None):
        self.aborted.append(rid if index is None else (rid, index))
        if index is None:
            self.reqs.pop(rid, None)

    def has_work(self):
        return bool(self.reqs)

    def schedule(self):
        self.steps += 1
        return StepPlan(self.steps, [], b"", b"", b"", b"", b"", b"", b"", b"", b"")

    def update(self, plan, result):
        outs = []
        for rid, st in list(self.reqs.items()):
            st[1] += 1
            done = st[1] == 2
            outs.append(Out(rid, st[0], 0, [10 + st[1]], "length" if done else None, [], completion_tokens=st[1]))
            if done:
                del self.reqs[rid]
        return outs

    def stats(self):
        return SchedulerCounters(num_running=len(self.reqs), num_free_blocks=self.blocks, num_total_blocks=self.blocks)


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


class Config:
    max_model_len = 128


def make(now=0.0):
    out = Outbox()
    svc = SchedulerService(Settings(peer_timeout=5.0, heartbeat_interval=0.5), Config(), FakeScheduler, out, now)
    return svc, out


def bring_up(svc, out, now=0.0):
    svc.on_message(Heartbeat("tokenizer", WorkerStatus(0, 1)), now)
    svc.on_message(Heartbeat("detokenizer", WorkerStatus(0, 2)), now)
    svc.on_message(RunnerReady(0, 3, 64, "inst-a"), now)  # no session yet: pinged, not used
    svc.tick(now)
    assert svc.sched is None and any(isinstance(m, SchedulerPing) for _, m in out.runner)
    svc.on_message(RunnerReady(0, 3, 64, "inst-a", svc.session), now)
    svc.tick(now)
    assert svc.sched is not None and svc.sched.blocks == 64


def request(rid, n_ids=3):
    return EngineRequest(rid, 1, pack_ids(list(range(n_ids))), SamplingParams(max_tokens=2))


def test_not_ready_then_ready():
    svc, out = make()
    svc.on_message(request("early"), 0.0)
    assert isinstance(out.detok[-1], RequestError) and out.detok[-1].status == 503
    bring_up(svc, out)
    svc.tick(0.1)  # stats go out right after a change, at most 20 times a second
    stats = out.stats[-1]
    assert stats.ready and stats.tokenizers == [WorkerStatus(0, 1)] and stats.engine.num_total_blocks == 64
    assert (stats.max_model_len, stats.num_active_requests, stats.steps_in_flight) == (128, 0, 0)


def test_request_runs_to_completion():
    svc, out = make()
    bring_up(svc, out)
    svc.on_message(request("r1"), 0.1)
    reg = out.detok[-1]
    assert isinstance(reg, DetokRegister) and unpack_ids(reg.prompt_tail).tolist() == [0, 1, 2]
    svc.tick(0.1)
    # the second plan goes out while the first runs: two in flight, then the loop may sleep
    assert [p.step_id for p in svc.inflight] == [1, 2] and not svc.busy
    assert [m for _, m in out.runner][-2:] == list(svc.inflight)
    svc.on_message(StepResult(7, b"", b""), 0.15)  # not the oldest outstanding step: dropped
    assert len(svc.inflight) == 2
    svc.on_message(StepResult(1, b"", b""), 0.2)
    assert svc.busy
    svc.tick(0.2)
    assert [p.step_id for p in svc.inflight] == [2, 3]
    svc.on_message(StepResult(2, b"", b""), 0.3)
    batches = [m for m in out.detok if isinstance(m, TokenBatch)]
    assert [d.finish_reason for b in batches for d in b.deltas] == [None, "length"]
    assert "r1" not in svc.requests
    svc.tick(0.3)
    svc.on_message(StepResult(3, b"", b""), 0.4)
    assert not svc.inflight and not svc.busy


def test_nothing_to_schedule_waits_for_a_message():
    svc, out = make()
    bring_up(svc, out)
    svc.on_message(request("r1"), 0.1)
    svc.tick(0.1)
    assert len(svc.inflight) == 2
    svc.sched.schedule = lambda: None  # e.g. every running sequence waits for its last token
    svc.on_message(StepResult(1, b"", b""), 0.2)
    svc.tick(0.2)
    assert len(svc.inflight) == 1 and not svc.busy  # the loop sleeps in poll() until the result comes
    svc.on_message(request("r2"), 0.25)  # still work to do after r1 ends
    svc.on_message(StepResult(2, b"", b""), 0.3)
    assert svc.busy
    svc.tick(0.3)
    assert not svc.inflight and svc.busy  # nothing in flight to wait for: retry rather than hang


def test_error_result_fails_the_engine():
    svc, out = make()
    bring_up(svc, out)
    svc.on_message(request("r1"), 0.1)
    svc.tick(0.1)
    svc.on_message(StepResult(-1, b"", b"", error="RuntimeError: boom"), 0.2)  # step id unknown to the runner
    assert svc.sched is None and not svc.inflight
    err = [m for m in out.detok if isinstance(m, RequestError)][-1]
    assert err.request_id == "r1" and err.status == 503 and "boom" in err.message and err.code == "engine_failure"


def test_rejection_and_abort_before_arrival():
    svc, out = make()
    bring_up(svc, out)
    svc.on_message(request("long", 200), 0.1)
    assert out.detok[-1].status == 400 and out.detok[-1].code == "context_length_exceeded"
    svc.on_message(AbortRequest("late"), 0.1)  # the abort overtook its request
    svc.on_message(request("late"), 0.2)
    assert "late" not in svc.requests
    svc.on_message(request("r2"), 0.3)
    svc.on_message(AbortRequest("r2", -1, "stop", 1), 0.3)  # one choice: the request stays until its outputs
    assert svc.sched.aborted == [("r2", 1)] and "r2" in svc.requests
    svc.on_message(AbortRequest("r2"), 0.3)
    assert svc.sched.aborted == [("r2", 1), "r2"] and svc.stats_dirty


def test_dead_runner_fails_requests_and_restarts_engine():
    svc, out = make()
    bring_up(svc, out)
    svc.on_message(request("r3"), 0.1)
    svc.on_message(Heartbeat("tokenizer", WorkerStatus(0, 1)), 5.9)
    svc.on_message(Heartbeat("detokenizer", WorkerStatus(0, 2)), 5.9)
    svc.tick(6.0)  # rank 0 last seen at 0.0
    err = [m for m in out.detok if isinstance(m, RequestError)][-1]
    assert err.request_id == "r3" and err.status == 503
    assert svc.sched is None and not out.stats[-1].ready
    # a restarted runner (new instance) joins the new session and the engine comes back
    svc.on_message(RunnerReady(0, 9, 32, "inst-b", svc.session), 6.1)
    svc.tick(6.1)
    assert svc.sched is not None and svc.sched.blocks == 32


def test_runner_restart_is_noticed_before_timeout():
    svc, out = make()
    bring_up(svc, out)
    svc.on_message(request("r4"), 0.1)
    old = svc.session
    svc.on_message(RunnerReady(0, 10, 64, "inst-new", old), 0.2)
    assert svc.session != old and svc.sched is None
    assert any(isinstance(m, RequestError) and m.request_id == "r4" for m in out.detok)
