"""The detokenizer: python -m services.detokenizer [settings flags]."""
from __future__ import annotations

import os
import sys
import time

import zmq

from shared.logs import setup_logging
from shared.messages import AbortRequest, DetokRegister, Heartbeat, RequestError, TokenBatch, WorkerStatus
from shared.settings import load_settings
from shared.sockets import Peers, PullSocket, PushSocket, endpoint
from services.detokenizer.state import Detokenizer
from services.runtime import exit_on_signals


def main(argv=None):
    settings = load_settings(sys.argv[1:] if argv is None else argv)
    log = setup_logging("detokenizer", settings.log_level)
    exit_on_signals()
    from engine.tokenizer import load_tokenizer

    detok = Detokenizer(load_tokenizer(settings))
    ctx = zmq.Context()
    inbox = PullSocket(ctx, endpoint(settings, "detokenizer"), expect=(DetokRegister, TokenBatch, RequestError))
    scheduler = PushSocket(ctx, endpoint(settings, "scheduler"))
    gateways = Peers(ctx, lambda gid: endpoint(settings, "gateway", gid))
    last_beat = 0.0
    log.info("detokenizer ready")
    while True:
        msg = inbox.recv(timeout=settings.heartbeat_interval)
        try:
            if isinstance(msg, DetokRegister):
                detok.register(msg)
            elif isinstance(msg, TokenBatch):
                outputs, aborts = detok.on_batch(msg)
                for gid, out in outputs:
                    gateways.send(gid, out)
                for rid, index in aborts:  # a stop string ended it: the engine can stop generating
                    scheduler.send(AbortRequest(rid, -1, "stop", index))
            elif isinstance(msg, RequestError):
                for gid, out in detok.fail(msg):
                    gateways.send(gid, out)
        except Exception:  # one bad message must not take the process down
            log.exception("dropped a message that could not be handled: %r", type(msg).__name__)
        now = time.monotonic()
        if now - last_beat >= settings.heartbeat_interval:
            last_beat = now
            scheduler.send(Heartbeat("detokenizer", WorkerStatus(0, os.getpid(), requests_open=len(detok.requests))))


if __name__ == "__main__":
    main()
