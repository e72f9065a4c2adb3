"""A tokenizer worker's logic: each TokenizeRequest becomes an EngineRequest for the scheduler plus a
Tokenized ack for its gateway, or a RequestError for its gateway; what its heartbeat says, and a load report.

No sockets here: requests come in through on_request(), everything leaves through the Outbox, and time
is passed in to tick(), so tests drive it with a fake tokenizer and a fake outbox.
"""
from __future__ import annotations

import logging
from typing import Protocol

from services.tokenizer import tasks
from shared.errors import FerryError, InvalidParameter
from shared.messages import (
    EngineRequest,
    Heartbeat,
    RequestError,
    Tokenized,
    TokenizeReply,
    TokenizeRequest,
    WorkerStatus,
)

LOAD_REPORT_INTERVAL = 10.0  # seconds between "load:" log lines while requests come in


class Outbox(Protocol):
    def to_scheduler(self, msg: EngineRequest | Heartbeat) -> None: ...
    def to_gateway(self, gateway_id: int, msg: Tokenized | TokenizeReply | RequestError) -> None: ...


class TokenizerService:
    def __init__(self, builder, out: Outbox, worker_id: int, pid: int, trace=None):
        self.builder = builder  # services.tokenizer.prompts.PromptBuilder: prepare(req) -> EngineRequest
        self.out = out
        self.worker_id, self.pid = worker_id, pid
        self.log = logging.getLogger(f"ferry.tokenizer.{worker_id}")
        self.handled = self.errors = 0
        self.last_report = 0.0
        self.trace = trace  # shared.first_token_trace.FirstTokenTrace with --trace-first-token, else None

    def on_request(self, req: TokenizeRequest) -> None:
        self.handled += 1
        if self.trace is not None:
            self.trace.hop(req.request_id, "tok_in")
        try:
            if req.task:  # /tokenize and friends: the answer goes back to the gateway, nothing to the engine
                self.out.to_gateway(req.gateway_id, tasks.answer(self.builder, req))
                return
            prepared = self.builder.prepare(req)
            self.log.debug("%s: %d prompt tokens", req.request_id, len(prepared.prompt_token_ids) // 4)
            if self.trace is not None:  # "out" hops are stamped as the message leaves: before the send
                self.trace.hop(req.request_id, "tok_out")
            self.out.to_scheduler(prepared)
            self.out.to_gateway(req.gateway_id, Tokenized(req.request_id, req.gateway_id))  # it is not ours any more
        except FerryError as e:
            self.errors += 1
            self.out.to_gateway(req.gateway_id, RequestError.of(req.request_id, req.gateway_id, e))
        except Exception as e:  # a bad template or tokenizer failure: tell the client, live on
            self.errors += 1
            self.log.exception("tokenizing %s failed", req.request_id)
            self.out.to_gateway(req.gateway_id, RequestError.of(
                req.request_id, req.gateway_id, InvalidParameter(f"could not tokenize the request: {e}")))

    def heartbeat(self) -> Heartbeat:
        """What the heartbeat thread sends (services/heartbeat.py): beats go on while a request renders."""
        return Heartbeat("tokenizer", WorkerStatus(self.worker_id, self.pid, self.handled, self.errors))

    def tick(self, now: float) -> None:
        """After every request or receive timeout: a load line now and then."""
        if now - self.last_report >= LOAD_REPORT_INTERVAL and self.handled:
            self.last_report = now
            self.log.info("load: %d requests handled, %d rejected", self.handled, self.errors)
