"""The scheduler: python -m services.scheduler [settings flags]."""
from __future__ import annotations

import time

import zmq

from services.runtime import start_service
from services.scheduler.first_token_hops import SchedulerHops
from services.scheduler.service import SchedulerService
from shared.first_token_trace import first_token_trace
from shared.messages import AbortRequest, EngineRequest, Heartbeat, RunnerReady, StepResult
from shared.sockets import PubSocket, PullSocket, PushSocket, endpoint


class SocketOutbox:
    def __init__(self, settings, ctx):
        # IMMEDIATE: a plan for a rank that is gone fails at once instead of waiting for its return.
        self.runners = [PushSocket(ctx, endpoint(settings, "runner", r), immediate=True)
                        for r in range(settings.tensor_parallel_size)]
        self.detokenizer = PushSocket(ctx, endpoint(settings, "detokenizer"))
        self.stats = PubSocket(ctx, endpoint(settings, "stats"))

    def to_runner(self, rank, msg):
        return self.runners[rank].send(msg)

    def to_detokenizer(self, msg):
        return self.detokenizer.send(msg)

    def publish(self, stats):
        self.stats.send(stats)


def main(argv=None):
    settings, log = start_service("scheduler", argv)
    from engine.model_config import load_model_config
    from engine.scheduler import Scheduler

    config = load_model_config(settings)
    ctx = zmq.Context()
    inbox = PullSocket(ctx, endpoint(settings, "scheduler"), expect=(EngineRequest, AbortRequest, Heartbeat))
    from_runners = PullSocket(ctx, endpoint(settings, "runner_out"), expect=(StepResult, RunnerReady))
    trace = first_token_trace(settings, log)
    service = SchedulerService(settings, config, lambda blocks: Scheduler(settings, config, blocks),
                               SocketOutbox(settings, ctx), time.monotonic(),
                               SchedulerHops(trace) if trace is not None else None)
    poller = zmq.Poller()
    poller.register(inbox.sock, zmq.POLLIN)
    poller.register(from_runners.sock, zmq.POLLIN)
    log.info("scheduler up; waiting for %d runner rank(s)", settings.tensor_parallel_size)
    idle_ms = int(settings.heartbeat_interval * 1000 / 4)
    while True:
        ready = dict(poller.poll(0 if service.busy else idle_ms))
        now = time.monotonic()
        # Results first: they free the runners for the next step.
        for sock in (from_runners, inbox):
            if sock.sock in ready:
                for msg in sock.drain(1000):
                    try:
                        service.on_message(msg, now)
                    except Exception:  # never let one message stop the engine loop
                        log.exception("handling %s failed", type(msg).__name__)
        try:
            service.tick(now)
        except Exception:
            log.exception("scheduler step failed")
            service.reset("scheduler step failed")


if __name__ == "__main__":
    main()
