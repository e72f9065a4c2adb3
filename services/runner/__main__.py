"""A model runner rank: python -m services.runner --rank R [settings flags].

With --tensor-parallel-size > 1 the ranks form one torch.distributed group (ModelRunner joins it;
the rendezvous is env://: MASTER_ADDR / MASTER_PORT, defaulting to 127.0.0.1:29500).

A rank that fails takes its group down: its peers' next collective fails (gloo reports a closed
connection at once) or, where a collective would wait on a peer that is gone but not closed (NCCL,
a stopped process), the scheduler's new session reaches the plan reader thread, which ends the
process from outside the stuck main thread. Then supervisord restarts every rank into a fresh group.

The decisions live in services.runner.service; this module only wires sockets, threads and the exit.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time

import zmq

from services.runner.service import RunnerService
from services.runtime import start_service
from shared.first_token_trace import first_token_trace
from shared.messages import SchedulerPing, StepPlan
from shared.sockets import PullSocket, PushSocket, endpoint


class Heartbeats(threading.Thread):
    """Announces readiness and KV capacity every heartbeat_interval, also while a long step runs
    (torch releases the GIL), so the scheduler only hears silence when this process is gone."""

    def __init__(self, settings, ctx, service: RunnerService):
        super().__init__(daemon=True)
        self.sock = PushSocket(ctx, endpoint(settings, "runner_out"))
        self.service = service
        self.interval = settings.heartbeat_interval

    def run(self):
        while True:
            self.sock.send(self.service.ready())
            time.sleep(self.interval)


def _hard_exit(code: int) -> None:
    """Leave now, whatever the main thread is blocked in (sys.exit would only end this thread)."""
    logging.shutdown()
    os._exit(code)


class PlanInbox(threading.Thread):
    """Reads the scheduler's pings and plans on its own thread; the service queues plans for the main thread.

    The main thread may sit in a collective that waits for a dead peer; this thread still hears the
    scheduler, so a new session or a stuck step (RunnerService.on_message / on_silence) ends the process
    even then.
    """

    def __init__(self, settings, ctx, service: RunnerService, exit=_hard_exit):
        super().__init__(daemon=True)
        self.sock = PullSocket(ctx, endpoint(settings, "runner", settings.rank), expect=(StepPlan, SchedulerPing))
        self.service, self.exit = service, exit
        self.poll = min(0.25, settings.heartbeat_interval)

    def run(self):
        while True:
            msg = self.sock.recv(timeout=self.poll)
            now = time.monotonic()
            code = self.service.on_silence(now) if msg is None else self.service.on_message(msg, now)
            if code is not None:
                self.exit(code)
                return


class ResultOutbox:
    def __init__(self, settings, ctx):
        self.sock = PushSocket(ctx, endpoint(settings, "runner_out"))

    def to_scheduler(self, result):
        self.sock.send(result)


def _share_cpu(settings, rank: int) -> None:
    """CPU ranks on one host split its cores instead of each spinning on all of them."""
    if settings.tensor_parallel_size <= 1 or "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    from engine.model_runner import resolve_device

    if resolve_device(settings, rank).type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.tensor_parallel_size))


def main(argv=None):
    settings, log = start_service("runner", argv)
    rank = settings.rank
    _share_cpu(settings, rank)
    from engine.model_runner import ModelRunner

    runner = ModelRunner(settings, rank=rank)
    ctx = zmq.Context()
    service = RunnerService(runner, ResultOutbox(settings, ctx), rank, os.getpid(), settings.peer_timeout,
                            time.monotonic(), session_grace=3 * settings.heartbeat_interval,
                            trace=first_token_trace(settings, log))
    Heartbeats(settings, ctx, service).start()
    PlanInbox(settings, ctx, service).start()
    log.info("runner rank %d ready: %d KV blocks", rank, runner.num_kv_blocks)
    while True:
        plan = service.next_plan()
        if plan is None and not runner.has_pending:
            continue  # no plan came and nothing is outstanding
        # plan None: the last step is done on the GPU and no plan came meanwhile: report it now
        code = service.step(plan, time.monotonic())
        if code is not None:
            if rank == 0:
                time.sleep(0.2)  # let the error result leave before the process does
            sys.exit(code)


if __name__ == "__main__":
    main()
