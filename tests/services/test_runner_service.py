"""The runner rank's logic with a fake model runner and outbox: no sockets, no model."""
import logging
import threading
import time

from services.runner.service import EXIT_SCHEDULER_SILENT, EXIT_SESSION_CHANGED, EXIT_STEP_FAILED, RunnerService
from shared.messages import SchedulerPing, StepPlan, StepResult

PEER_TIMEOUT = 5.0


def plan(step_id, session="s1"):
    return StepPlan(step_id, [], b"", b"", b"", b"", b"", b"", b"", b"", b"", session)


class FakeRunner:
    """ModelRunner's surface the service uses: submit/flush a step, the outstanding one, finished runs."""

    def __init__(self, pending: bool = False, done: bool = False, fail: Exception | None = None):
        self.has_pending, self.done, self.fail = pending, done, fail
        self.num_kv_blocks = 128
        self.finished_runs: list[str] = []
        self.submitted: list = []
        self.busy_during_step = None

    def pending_done(self) -> bool:
        return self.done

    def submit(self, p):
        return self._step(p)

    def flush(self):
        return self._step(None)

    def _step(self, p):
        self.busy_during_step = self.service.busy_since
        if self.fail is not None:
            raise self.fail
        self.submitted.append(p)
        return StepResult(p.step_id if p is not None else 0, b"s", b"t")


class FakeOutbox:
    def __init__(self):
        self.sent = []

    def to_scheduler(self, result):
        self.sent.append(result)


def make(rank=0, **runner_kw):
    runner, out = FakeRunner(**runner_kw), FakeOutbox()
    service = RunnerService(runner, out, rank, pid=4242, peer_timeout=PEER_TIMEOUT, now=0.0, instance="inst-1")
    runner.service = service
    return service, runner, out


# ---------------------------------------------------------------- the session handshake


def test_ready_announces_the_rank_and_joins_the_first_session_it_hears():
    service, _, _ = make(rank=1)
    beat = service.ready()
    assert (beat.rank, beat.pid, beat.num_kv_blocks, beat.instance, beat.session) == (1, 4242, 128, "inst-1", "")
    assert service.on_message(SchedulerPing("s1"), now=1.0) is None
    assert service.ready().session == "s1"  # built from the service's state, not a message kept and mutated
    assert beat.session == ""


def test_every_start_gets_a_new_instance():
    a, b = RunnerService(FakeRunner(), FakeOutbox(), 0, 1, PEER_TIMEOUT, 0.0), \
        RunnerService(FakeRunner(), FakeOutbox(), 0, 1, PEER_TIMEOUT, 0.0)
    assert a.instance and b.instance and a.instance != b.instance
    assert a.ready().instance == a.ready().instance


def test_a_plan_before_the_handshake_is_dropped_and_one_after_it_is_queued():
    service, _, _ = make()
    assert service.on_message(plan(1), now=1.0) is None
    assert service.plans.empty()  # a plan from before our handshake cannot be ours
    service.on_message(SchedulerPing("s1"), now=1.1)
    service.on_message(plan(2), now=1.2)
    assert service.plans.get_nowait().step_id == 2
    service.on_message(plan(3, session="forged"), now=1.3)  # another session's plan: logged and dropped
    assert service.plans.empty()


def test_a_forged_ping_cannot_end_a_rank_whose_scheduler_still_pings():
    service = RunnerService(FakeRunner(), FakeOutbox(), 0, 1, PEER_TIMEOUT, 0.0, session_grace=1.5)
    service.on_message(SchedulerPing("s1"), now=1.0)
    service.step(plan(1), now=1.1)  # from now on the rank holds sequences of session s1
    assert service.on_message(SchedulerPing("forged"), now=1.2) is None
    service.on_message(SchedulerPing("s1"), now=1.5)
    assert service.on_message(SchedulerPing("forged"), now=2.9) is None  # s1 was heard 1.4s ago
    assert service.ready().session == "s1"
    # the real scheduler restarted (or reset): s1 falls silent, the new session's pings end the rank
    assert service.on_message(SchedulerPing("s2"), now=3.0) == EXIT_SESSION_CHANGED


def test_a_new_scheduler_session_ends_the_process(caplog):
    service, _, _ = make()
    service.on_message(SchedulerPing("s1"), now=1.0)
    assert service.on_message(SchedulerPing("s1"), now=2.0) is None  # the same scheduler, still there
    service.busy_since = 2.5  # also while a step is stuck in a collective
    with caplog.at_level(logging.WARNING, "ferry.runner.0"):
        assert service.on_message(SchedulerPing("s2"), now=3.0) == EXIT_SESSION_CHANGED == 3
    assert "scheduler session changed during a step" in caplog.text
    assert service.ready().session == "s1"


# ---------------------------------------------------------------- the stuck-step rule


def test_a_step_that_outlives_a_silent_scheduler_ends_the_process(caplog):
    service, _, _ = make()
    service.on_message(SchedulerPing("s1"), now=1.0)
    assert service.on_silence(now=100.0) is None  # silent while idle: a runner waits for its scheduler
    service.busy_since = 100.0
    assert service.on_silence(now=100.0 + PEER_TIMEOUT) is None  # the step is not that old yet
    with caplog.at_level(logging.ERROR, "ferry.runner.0"):
        assert service.on_silence(now=100.1 + PEER_TIMEOUT) == EXIT_SCHEDULER_SILENT == 4
    assert "step blocked for 5.1s with the scheduler silent for 104.1s" in caplog.text


def test_a_long_step_is_fine_while_the_scheduler_still_pings():
    service, _, _ = make()
    service.on_message(SchedulerPing("s1"), now=1.0)
    service.busy_since = 1.0
    service.on_message(SchedulerPing("s1"), now=1.0 + PEER_TIMEOUT)
    assert service.on_silence(now=2.0 + PEER_TIMEOUT) is None  # busy 6s, but heard 1s ago
    assert service.on_silence(now=1.1 + 2 * PEER_TIMEOUT) == EXIT_SCHEDULER_SILENT


# ---------------------------------------------------------------- running steps


def test_rank_0_sends_its_result_and_logs_finished_runs(caplog):
    service, runner, out = make()
    runner.finished_runs.append("run 1: 10 tokens")
    with caplog.at_level(logging.INFO, "ferry.runner.0"):
        assert service.step(plan(7), now=3.0) is None
    assert runner.busy_during_step == 3.0 and service.busy_since is None
    assert [r.step_id for r in out.sent] == [7]
    assert runner.finished_runs == [] and "run 1: 10 tokens" in caplog.text
    assert service.step(None, now=4.0) is None  # a flush of the outstanding step
    assert runner.submitted == [plan(7), None] and len(out.sent) == 2


def test_other_ranks_send_no_results():
    service, runner, out = make(rank=1)
    assert service.step(plan(7), now=3.0) is None
    assert runner.submitted == [plan(7)] and out.sent == []


def test_a_failed_step_is_reported_by_rank_0_and_ends_every_rank(caplog):
    service, _, out = make(fail=RuntimeError("peer gone"))
    with caplog.at_level(logging.ERROR, "ferry.runner.0"):
        assert service.step(plan(9), now=1.0) == EXIT_STEP_FAILED == 1
    assert "step 9 failed" in caplog.text
    # signed with the session, rank and instance: the scheduler believes errors of its own session only
    assert out.sent == [StepResult(9, b"", b"", error="RuntimeError: peer gone", session="", instance="inst-1")]
    service, runner, out = make()
    service.on_message(SchedulerPing("s1"), now=0.5)
    service.step(plan(4), now=1.0)
    assert (out.sent[-1].step_id, out.sent[-1].session) == (4, "s1")
    runner.fail = RuntimeError("peer gone")
    assert service.step(None, now=1.0) == EXIT_STEP_FAILED
    assert out.sent[-1].step_id == 4 and out.sent[-1].error  # a failed flush: the newest step submitted
    service, _, out = make(rank=1, fail=RuntimeError("peer gone"))
    assert service.step(plan(9), now=1.0) == EXIT_STEP_FAILED and out.sent == []


# ---------------------------------------------------------------- next_plan: launch behind, or report


def test_a_plan_that_arrives_while_the_gpu_works_is_launched_behind_it():
    service, _, _ = make(pending=True)
    threading.Timer(0.05, service.plans.put, args=("plan 2",)).start()  # comes while step 1 still runs
    assert service.next_plan() == "plan 2"


def test_the_last_step_is_reported_as_soon_as_the_gpu_is_done():
    service, runner, _ = make(pending=True)
    threading.Timer(0.05, setattr, args=(runner, "done", True)).start()
    t0 = time.monotonic()
    assert service.next_plan() is None  # then the caller flushes and sends the result
    assert time.monotonic() - t0 < 0.5


def test_an_idle_runner_waits_for_the_next_plan():
    service, _, _ = make(pending=False)
    service.plans.put("plan 1")
    assert service.next_plan() == "plan 1"


def test_a_rank_that_ran_no_plan_joins_a_new_session_in_place():
    """A restarted rank joins the session it hears, the scheduler resets on believing the restart: the rank holds
    nothing yet, so it moves to the new session instead of exiting into another restart."""
    service = RunnerService(FakeRunner(), FakeOutbox(), 0, 1, PEER_TIMEOUT, 0.0, session_grace=1.5)
    service.on_message(SchedulerPing("s1"), now=1.0)
    assert service.on_message(SchedulerPing("s2"), now=1.2) is None and service.session == "s1"  # s1 alive
    assert service.on_message(SchedulerPing("s2"), now=2.6) is None and service.session == "s2"
