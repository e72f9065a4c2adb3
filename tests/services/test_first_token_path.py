"""Issue 17's first-token path without sockets: a prompt step's result leaves the runner before the next step runs,
and --trace-first-token's hops (scheduler, runner, detokenizer, tokenizer) join into one breakdown per request."""
import logging

from test_scheduler_service import answer, bring_up, make, plans, request

from benchmarks.first_token_hops import breakdown, read_hops
from services.detokenizer.service import DetokenizerService
from services.runner.service import RunnerService
from services.scheduler.first_token_hops import SchedulerHops
from services.tokenizer.service import TokenizerService
from shared.codec import pack_ids
from shared.first_token_trace import PREFIX, FirstTokenTrace, first_token_trace
from shared.messages import (
    AbortRequest,
    DetokRegister,
    EngineRequest,
    NewSequence,
    SchedulerPing,
    SeqDelta,
    StepPlan,
    StepResult,
    TokenBatch,
    TokenizeRequest,
)
from shared.sampling_params import SamplingParams
from shared.settings import Settings

PEER_TIMEOUT = 5.0


class OverlappingRunner:
    """ModelRunner's contract: submit(plan) runs plan's forward, then finishes the outstanding step and returns its
    result; flush() finishes the outstanding step. Every forward and finish lands in `events`."""

    def __init__(self, events: list, done: bool = True):
        self.events, self.done = events, done
        self.pending = None
        self.num_kv_blocks = 16
        self.finished_runs: list[str] = []

    @property
    def has_pending(self) -> bool:
        return self.pending is not None

    def pending_done(self) -> bool:
        return self.done

    def submit(self, plan):
        self.events.append(f"forward {plan.step_id}")
        result = self.flush()
        self.pending = plan
        return result

    def flush(self):
        step, self.pending = self.pending, None
        if step is None:
            return None
        self.events.append(f"finish {step.step_id}")
        return StepResult(step.step_id, b"", b"", session="s1")


class EventOutbox:
    def __init__(self, events: list):
        self.events = events

    def to_scheduler(self, result):
        self.events.append(f"sent {result.step_id}")


def step_plan(step_id: int, num_tokens: list[int], new: bool = False) -> StepPlan:
    """A plan of len(num_tokens) sequences, sequence i running num_tokens[i] tokens (more than 1: a prompt chunk)."""
    ids = list(range(len(num_tokens)))
    new_seqs = [NewSequence(i, pack_ids([1] * n), SamplingParams(), pack_ids([2])) for i, n in enumerate(num_tokens)]
    return StepPlan(step_id, new_seqs if new else [], pack_ids(ids), pack_ids(num_tokens), pack_ids([0] * len(ids)),
                    pack_ids([1] * sum(num_tokens)), pack_ids([0] * len(ids)), pack_ids([0] * len(ids)), b"",
                    bytes([1] * len(ids)), b"", "s1")


def runner_service(events, done=True, trace=None, session="s1"):
    service = RunnerService(OverlappingRunner(events, done), EventOutbox(events), 0, pid=1, peer_timeout=PEER_TIMEOUT,
                            now=0.0, instance="i", trace=trace)
    service.on_message(SchedulerPing(session), now=0.0)
    return service


def test_a_prompt_steps_first_tokens_leave_before_the_next_step_runs():
    events = []
    service = runner_service(events)
    service.step(step_plan(1, [5], new=True), now=1.0)  # a 5-token prompt
    service.step(step_plan(2, [1]), now=2.0)  # its first decode, planned on the placeholder
    # before issue 17: forward 2 ran first, and on the CPU that is a whole step the first token waited
    assert events == ["forward 1", "finish 1", "sent 1", "forward 2"]


def test_decode_steps_keep_launching_before_finishing():
    events = []
    service = runner_service(events)
    for step_id in (1, 2, 3):
        service.step(step_plan(step_id, [1, 1]), now=float(step_id))
    assert events == ["forward 1", "forward 2", "finish 1", "sent 1", "forward 3", "finish 2", "sent 2"]


def test_a_prompt_step_still_running_on_the_device_has_the_next_step_launched_behind_it():
    events = []
    service = runner_service(events, done=False)  # the GPU still works on step 1
    service.step(step_plan(1, [3, 1]), now=1.0)
    service.step(step_plan(2, [1, 1]), now=2.0)
    assert events == ["forward 1", "forward 2", "finish 1", "sent 1"]
    service.step(None, now=3.0)  # nothing came: the last step is flushed
    assert events[-2:] == ["finish 2", "sent 2"]


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(PREFIX)]


def test_the_scheduler_names_the_step_that_samples_each_first_token_and_the_tool_joins_the_runner_to_it(caplog):
    svc, out = make()
    svc.hops = SchedulerHops(FirstTokenTrace(logging.getLogger("test.scheduler")))
    bring_up(svc, out)
    events = []
    runner = runner_service(events, trace=FirstTokenTrace(logging.getLogger("test.runner")), session=svc.session)
    with caplog.at_level(logging.INFO):
        svc.on_message(request("r1", n_ids=3), 1.0)
        svc.tick(1.0)
        first, second = plans(out)[:2]  # the prompt, then its first decode on the placeholder
        runner.on_message(first, 1.1)
        runner.step(first, 1.1)
        runner.step(second, 1.2)
        assert events[:3] == [f"forward {first.step_id}", f"finish {first.step_id}", f"sent {first.step_id}"]
        svc.on_message(answer(first), 1.3)
        svc.on_message(answer(second), 1.4)  # later tokens: nothing more is logged
    assert any(isinstance(m, TokenBatch) for m in out.detok)
    hops = read_hops(lines(caplog))
    assert list(hops) == ["r1"]
    rows = breakdown(hops)  # the runner's hops (logged by step) joined to r1 through sched_plan_out's step
    assert {hop for hop, *_ in rows} == {"sched_in", "sched_admitted", "sched_plan_out", "run_plan_in",
                                         "run_step_start", "run_submitted", "run_result_out", "sched_result_in",
                                         "sched_tokens_out"}
    assert all(n == 1 and since_first >= 0 for _, _, since_first, n in rows)
    assert hops["r1"]["run_result_out"] <= hops["r1"]["sched_result_in"]
    assert sum(1 for line in lines(caplog) if "sched_result_in" in line) == 1


class FakeTokenizer:
    def decode(self, ids, **kw):
        return "".join(chr(ord("a") + i % 26) for i in ids)


class Outbox:
    def __init__(self):
        self.sent = []

    def to_scheduler(self, msg):
        self.sent.append(msg)

    def to_gateway(self, gateway_id, msg):
        self.sent.append(msg)


class Builder:
    def prepare(self, req):
        return EngineRequest(req.request_id, req.gateway_id, pack_ids([1, 2]), req.params)


def test_the_tokenizer_and_detokenizer_log_a_requests_first_token_once(caplog):
    trace = FirstTokenTrace(logging.getLogger("test.workers"))
    detok = DetokenizerService(FakeTokenizer(), Outbox(), pid=1, trace=trace)
    tok = TokenizerService(Builder(), Outbox(), worker_id=0, pid=1, trace=trace)
    with caplog.at_level(logging.INFO):
        tok.on_request(TokenizeRequest("r1", 0, SamplingParams(), prompt="hi"))
        detok.on_message(DetokRegister("r1", 0, 1, pack_ids([1, 2])))
        for _ in range(3):
            detok.on_message(TokenBatch([SeqDelta("r1", 0, 0, pack_ids([3]))]))
    hops = [line.split()[2] for line in lines(caplog)]
    assert hops == ["hop=tok_in", "hop=tok_out", "hop=detok_in", "hop=detok_out"]
    assert not detok.awaiting_first


def test_tracing_is_off_by_default_and_then_nothing_is_logged(caplog):
    assert first_token_trace(Settings(), logging.getLogger("x")) is None
    assert first_token_trace(Settings(trace_first_token=True), logging.getLogger("x")) is not None
    detok = DetokenizerService(FakeTokenizer(), Outbox(), pid=1)
    svc, out = make()
    bring_up(svc, out)
    with caplog.at_level(logging.DEBUG):
        detok.on_message(DetokRegister("r1", 0, 1, pack_ids([1, 2])))
        detok.on_message(TokenBatch([SeqDelta("r1", 0, 0, pack_ids([3]))]))
        svc.on_message(request("r1"), 1.0)
        svc.tick(1.0)
        svc.on_message(answer(plans(out)[0]), 1.1)
    assert lines(caplog) == [] and not detok.awaiting_first


def test_a_request_aborted_before_its_first_plan_leaves_nothing_awaited():
    svc, out = make()
    svc.hops = SchedulerHops(FirstTokenTrace(logging.getLogger("test.scheduler")))
    bring_up(svc, out)
    svc.on_message(request("r1", n_ids=3), 1.0)
    assert list(svc.hops.awaiting_plan.values()) == ["r1"]
    svc.on_message(AbortRequest("r1"), 1.1)
    assert svc.hops.awaiting_plan == {}
