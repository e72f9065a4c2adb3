"""The detokenizer: python -m services.detokenizer [settings flags].

The logic lives in services.detokenizer.service; this module only wires sockets.
"""
from __future__ import annotations

import os

import zmq

from services.detokenizer.service import DetokenizerService
from services.heartbeat import start_heartbeat
from services.runtime import start_service
from services.worker_outbox import WorkerOutbox
from shared.first_token_trace import first_token_trace
from shared.messages import DetokRegister, RequestError, TokenBatch
from shared.sockets import PullSocket, endpoint


def main(argv=None):
    settings, log = start_service("detokenizer", argv)
    from engine.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(settings)
    ctx = zmq.Context()
    inbox = PullSocket(ctx, endpoint(settings, "detokenizer"), expect=(DetokRegister, TokenBatch, RequestError))
    service = DetokenizerService(tokenizer, WorkerOutbox(settings, ctx), os.getpid(),
                                 first_token_trace(settings, log))
    start_heartbeat(ctx, endpoint(settings, "scheduler"), service.heartbeat, settings.heartbeat_interval)
    log.info("detokenizer ready")
    while True:
        msg = inbox.recv(timeout=settings.heartbeat_interval)  # a timeout keeps signals heard
        if msg is not None:
            service.on_message(msg)


if __name__ == "__main__":
    main()
