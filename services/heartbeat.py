"""A heartbeat on its own thread: a process's liveness must not wait on its work.

A tokenizer worker rendering a slow chat template, or a detokenizer with a long batch, would
otherwise fall silent and be judged dead while working. The thread owns its socket (ZeroMQ sockets
are not thread-safe) and sends whatever beat() says about the process now.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

import zmq

from shared.sockets import PushSocket

log = logging.getLogger("ferry.heartbeat")


class HeartbeatThread(threading.Thread):
    def __init__(self, ctx: zmq.Context, addr: str, beat: Callable[[], object], interval: float):
        super().__init__(daemon=True, name="heartbeat")
        self.ctx, self.addr, self.beat, self.interval = ctx, addr, beat, interval
        self.stopped = threading.Event()

    def run(self):
        sock = PushSocket(self.ctx, self.addr)  # made here: used by this thread only
        try:
            while not self.stopped.is_set():
                try:
                    sock.send(self.beat())
                except Exception:  # a bad beat must not end the heartbeat for good
                    log.exception("heartbeat failed")
                self.stopped.wait(self.interval)
        finally:
            sock.close()

    def stop(self):
        self.stopped.set()


def start_heartbeat(ctx: zmq.Context, addr: str, beat: Callable[[], object], interval: float) -> HeartbeatThread:
    thread = HeartbeatThread(ctx, addr, beat, interval)
    thread.start()
    return thread
