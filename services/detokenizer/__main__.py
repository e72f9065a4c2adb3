"""The detokenizer: python -m services.detokenizer [settings flags].

The logic lives in services.detokenizer.service; this module only wires sockets.
"""
from __future__ import annotations

import os

import zmq

from services.detokenizer.service import DetokenizerService
from services.heartbeat import start_heartbeat
from services.runtime import start_service
from shared.messages import DetokRegister, RequestError, TokenBatch
from shared.sockets import Peers, PullSocket, PushSocket, endpoint


class SocketOutbox:
    def __init__(self, settings, ctx):
        self.scheduler = PushSocket(ctx, endpoint(settings, "scheduler"))
        self.gateways = Peers(ctx, lambda gid: endpoint(settings, "gateway", gid))

    def to_scheduler(self, msg):
        self.scheduler.send(msg)

    def to_gateway(self, gateway_id, msg):
        self.gateways.send(gateway_id, msg)


def main(argv=None):
    settings, log = start_service("detokenizer", argv)
    from engine.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(settings)
    ctx = zmq.Context()
    inbox = PullSocket(ctx, endpoint(settings, "detokenizer"), expect=(DetokRegister, TokenBatch, RequestError))
    service = DetokenizerService(tokenizer, SocketOutbox(settings, ctx), os.getpid())
    start_heartbeat(ctx, endpoint(settings, "scheduler"), service.heartbeat, settings.heartbeat_interval)
    log.info("detokenizer ready")
    while True:
        msg = inbox.recv(timeout=settings.heartbeat_interval)  # a timeout keeps signals heard
        if msg is not None:
            service.on_message(msg)


if __name__ == "__main__":
    main()
