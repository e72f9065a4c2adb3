"""A model runner rank: python -m services.runner --rank R [settings flags].

With --tensor-parallel-size > 1 the ranks form one torch.distributed group (ModelRunner joins it;
the rendezvous is env://: MASTER_ADDR / MASTER_PORT, defaulting to 127.0.0.1:29500).
"""
from __future__ import annotations

import os
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


def main(argv=None):
    settings = load_settings(sys.argv[1:] if argv is None else argv)
    rank = settings.rank
    log = setup_logging(f"runner.{rank}", settings.log_level)
    exit_on_signals()
    from engine.model_runner import ModelRunner

    runner = ModelRunner(settings, rank=rank)
    ctx = zmq.Context()
    plans = PullSocket(ctx, endpoint(settings, "runner", rank), expect=(StepPlan, SchedulerPing))
    results = PushSocket(ctx, endpoint(settings, "runner_out"))
    beats = Heartbeats(settings, ctx, runner.num_kv_blocks)
    beats.start()
    log.info("runner rank %d ready: %d KV blocks", rank, runner.num_kv_blocks)
    while True:
        msg = plans.recv(timeout=settings.peer_timeout)
        if isinstance(msg, SchedulerPing):
            if beats.msg.session and msg.session != beats.msg.session:
                # A new scheduler session: our per-sequence state belongs to a dead one.
                log.warning("scheduler session changed; exiting so that a clean runner takes over")
                sys.exit(3)
            beats.msg.session = msg.session
        elif isinstance(msg, StepPlan):
            if not beats.msg.session:
                continue  # a plan from before our handshake cannot be ours
            try:
                result = runner.execute(msg)
            except Exception as e:
                # Rank state is suspect now: report, then exit so that the supervisor restarts us.
                log.exception("step %d failed", msg.step_id)
                if rank == 0:
                    results.send(StepResult(msg.step_id, b"", b"", error=f"{type(e).__name__}: {e}"))
                    time.sleep(0.2)
                sys.exit(1)
            if rank == 0 and result is not None:
                results.send(result)


if __name__ == "__main__":
    main()
