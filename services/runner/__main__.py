"""A model runner rank: python -m services.runner --rank R [settings flags].

With --tensor-parallel-size > 1 the ranks form one torch.distributed group (ModelRunner joins it;
the rendezvous is env://: MASTER_ADDR / MASTER_PORT, defaulting to 127.0.0.1:29500).

A rank that fails takes its group down: its peers' next collective fails (gloo reports a closed
connection at once) or, where a collective would wait on a peer that is gone but not closed (NCCL,
a stopped process), the scheduler's new session reaches the plan reader thread, which ends the
process from outside the stuck main thread. Then supervisord restarts every rank into a fresh group.
"""
from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import uuid

import zmq

from shared.logs import setup_logging
from shared.messages import RunnerReady, SchedulerPing, StepPlan, StepResult
from shared.settings import load_settings
from shared.sockets import PullSocket, PushSocket, endpoint
from services.runtime import exit_on_signals

EXIT_SESSION_CHANGED = 3
EXIT_SCHEDULER_SILENT = 4


class Heartbeats(threading.Thread):
    """Announces readiness and KV capacity every heartbeat_interval, also while a long step runs
    (torch releases the GIL), so the scheduler only hears silence when this process is gone."""

    def __init__(self, settings, ctx, num_kv_blocks: int):
        super().__init__(daemon=True)
        self.sock = PushSocket(ctx, endpoint(settings, "runner_out"))
        self.msg = RunnerReady(settings.rank, os.getpid(), num_kv_blocks, uuid.uuid4().hex)
        self.interval = settings.heartbeat_interval

    def run(self):
        while True:
            self.sock.send(self.msg)
            time.sleep(self.interval)


def _hard_exit(code: int) -> None:
    """Leave now, whatever the main thread is blocked in (sys.exit would only end this thread)."""
    logging.shutdown()
    os._exit(code)


class PlanInbox(threading.Thread):
    """Reads the scheduler's pings and plans on its own thread and hands plans to the main thread.

    The main thread may sit in a collective that waits for a dead peer; this thread still hears the
    scheduler, so a new session (the scheduler gave up on the group) ends the process even then.
    While a step runs it also ends the process when the scheduler has been silent for peer_timeout:
    a step that outlives its scheduler can only be stuck, and nobody would use its result.
    """

    def __init__(self, settings, ctx, beats: Heartbeats, log: logging.Logger, exit=_hard_exit):
        super().__init__(daemon=True)
        self.sock = PullSocket(ctx, endpoint(settings, "runner", settings.rank), expect=(StepPlan, SchedulerPing))
        self.beats, self.log, self.exit = beats, log, exit
        self.peer_timeout = settings.peer_timeout
        self.poll = min(0.25, settings.heartbeat_interval)
        self.plans: queue.Queue[StepPlan] = queue.Queue()
        self.busy_since: float | None = None  # set by the main thread while it executes a plan
        self.last_heard = time.monotonic()

    def run(self):
        while True:
            msg = self.sock.recv(timeout=self.poll)
            now = time.monotonic()
            if msg is None:
                busy = self.busy_since
                if (busy is not None and now - busy > self.peer_timeout
                        and now - self.last_heard > self.peer_timeout):
                    self.log.error("step blocked for %.1fs with the scheduler silent for %.1fs; exiting",
                                   now - busy, now - self.last_heard)
                    self.exit(EXIT_SCHEDULER_SILENT)
                    return
                continue
            self.last_heard = now
            if isinstance(msg, SchedulerPing):
                session = self.beats.msg.session
                if session and msg.session != session:
                    # A new scheduler session: our per-sequence state (and maybe our group) is dead.
                    self.log.warning("scheduler session changed%s; exiting so that a clean runner takes over",
                                     " during a step" if self.busy_since is not None else "")
                    self.exit(EXIT_SESSION_CHANGED)
                    return
                self.beats.msg.session = msg.session
            elif self.beats.msg.session:  # a plan from before our handshake cannot be ours
                self.plans.put(msg)


def _share_cpu(settings, rank: int) -> None:
    """CPU ranks on one host split its cores instead of each spinning on all of them."""
    if settings.tensor_parallel_size <= 1 or "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    from engine.model_runner import resolve_device

    if resolve_device(settings, rank).type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.tensor_parallel_size))


def main(argv=None):
    settings = load_settings(sys.argv[1:] if argv is None else argv)
    rank = settings.rank
    log = setup_logging(f"runner.{rank}", settings.log_level)
    exit_on_signals()
    _share_cpu(settings, rank)
    from engine.model_runner import ModelRunner

    runner = ModelRunner(settings, rank=rank)
    ctx = zmq.Context()
    results = PushSocket(ctx, endpoint(settings, "runner_out"))
    beats = Heartbeats(settings, ctx, runner.num_kv_blocks)
    inbox = PlanInbox(settings, ctx, beats, log)
    beats.start()
    inbox.start()
    log.info("runner rank %d ready: %d KV blocks", rank, runner.num_kv_blocks)
    while True:
        plan = next_plan(inbox, runner)
        if plan is None:  # the last step is done on the GPU and no plan came meanwhile: report it now
            if runner.has_pending:
                _run(runner, None, inbox, results, rank, log)
            continue
        _run(runner, plan, inbox, results, rank, log)


def next_plan(inbox: PlanInbox, runner, poll: float = 0.0002):
    """The next plan; None when a step is outstanding and its GPU work ends before one arrives (then its
    result goes out at once). While the GPU runs a step, a plan that arrives is launched behind it, so
    the GPU goes from one step to the next without waiting for the host."""
    if not runner.has_pending:
        try:
            return inbox.plans.get(timeout=1.0)  # a timeout keeps SIGTERM/SIGINT handled promptly
        except queue.Empty:
            return None
    while True:
        try:
            return inbox.plans.get(timeout=poll)
        except queue.Empty:
            if runner.pending_done():
                return None


def _run(runner, plan, inbox: PlanInbox, results: PushSocket, rank: int, log) -> None:
    """Submit a plan (None: flush the outstanding step); send rank 0's result; exit on failure."""
    inbox.busy_since = time.monotonic()
    try:
        result = runner.submit(plan) if plan is not None else runner.flush()
    except Exception as e:
        # Rank state is suspect now (a peer may be gone): report, then exit so that the supervisor
        # restarts us; the other ranks fail their next collective or see the new session.
        step = plan.step_id if plan is not None else -1
        log.exception("step %d failed", step)
        if rank == 0:
            # the scheduler fails the engine on any error result; the oldest outstanding step id is unknown here
            results.send(StepResult(step, b"", b"", error=f"{type(e).__name__}: {e}"))
            time.sleep(0.2)
        sys.exit(1)
    inbox.busy_since = None
    if rank == 0 and result is not None:
        results.send(result)
    while runner.finished_runs:
        log.info("%s", runner.finished_runs.pop(0))


if __name__ == "__main__":
    main()
