"""The runner service's choice between launching the next plan and reporting the last step."""
import queue
import threading
import time
from types import SimpleNamespace

from services.runner.__main__ import next_plan


class FakeRunner:
    def __init__(self, pending: bool, done: bool = False):
        self.has_pending, self.done = pending, done

    def pending_done(self) -> bool:
        return self.done


def test_a_plan_that_arrives_while_the_gpu_works_is_launched_behind_it():
    inbox = SimpleNamespace(plans=queue.Queue())
    runner = FakeRunner(pending=True)
    threading.Timer(0.05, inbox.plans.put, args=("plan 2",)).start()  # comes while step 1 still runs
    assert next_plan(inbox, runner) == "plan 2"


def test_the_last_step_is_reported_as_soon_as_the_gpu_is_done():
    inbox = SimpleNamespace(plans=queue.Queue())
    runner = FakeRunner(pending=True)
    threading.Timer(0.05, setattr, args=(runner, "done", True)).start()
    t0 = time.monotonic()
    assert next_plan(inbox, runner) is None  # then the caller flushes and sends the result
    assert time.monotonic() - t0 < 0.5


def test_an_idle_runner_waits_for_the_next_plan():
    inbox = SimpleNamespace(plans=queue.Queue())
    inbox.plans.put("plan 1")
    assert next_plan(inbox, FakeRunner(pending=False)) == "plan 1"
