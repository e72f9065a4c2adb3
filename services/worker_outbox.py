"""The sockets a pipeline worker (tokenizer, detokenizer) answers through: the scheduler, and each gateway by id."""
from __future__ import annotations

from shared.sockets import Peers, PushSocket, endpoint


class WorkerOutbox:
    def __init__(self, settings, ctx):
        self.scheduler = PushSocket(ctx, endpoint(settings, "scheduler"))
        self.gateways = Peers(ctx, lambda gid: endpoint(settings, "gateway", gid))

    def to_scheduler(self, msg):
        self.scheduler.send(msg)

    def to_gateway(self, gateway_id, msg):
        self.gateways.send(gateway_id, msg)
