"""A tokenizer worker: python -m services.tokenizer --tokenizer-id N [settings flags].

The request handling lives in services.tokenizer.service; this module only wires sockets.
"""
from __future__ import annotations

import os
import time

import zmq

from services.heartbeat import start_heartbeat
from services.runtime import start_service
from services.tokenizer.prompts import PromptBuilder
from services.tokenizer.service import TokenizerService
from services.worker_outbox import WorkerOutbox
from shared.first_token_trace import first_token_trace
from shared.messages import TokenizeRequest
from shared.sockets import PullSocket, endpoint


def main(argv=None):
    settings, log = start_service("tokenizer", argv)
    wid = settings.tokenizer_id
    from engine.model_config import load_model_config
    from engine.tokenizer import load_tokenizer

    config = load_model_config(settings)
    builder = PromptBuilder(load_tokenizer(settings), config.max_model_len, config.vocab_size)
    ctx = zmq.Context()
    inbox = PullSocket(ctx, endpoint(settings, "tokenizer", wid), expect=TokenizeRequest)
    service = TokenizerService(builder, WorkerOutbox(settings, ctx), wid, os.getpid(),
                               first_token_trace(settings, log))
    start_heartbeat(ctx, endpoint(settings, "scheduler"), service.heartbeat, settings.heartbeat_interval)
    log.info("tokenizer worker %d ready (max_model_len %d)", wid, config.max_model_len)
    while True:
        req = inbox.recv(timeout=settings.heartbeat_interval)
        if req is not None:
            service.on_request(req)
        service.tick(time.monotonic())


if __name__ == "__main__":
    main()
