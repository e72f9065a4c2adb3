"""A tokenizer worker: python -m services.tokenizer --tokenizer-id N [settings flags]."""
from __future__ import annotations

import os
import sys
import time

import zmq

from shared.errors import FerryError, InvalidParameter
from shared.logs import setup_logging
from shared.messages import Heartbeat, RequestError, TokenizeRequest, Tokenized, WorkerStatus
from shared.settings import load_settings
from shared.sockets import Peers, PullSocket, PushSocket, endpoint
from services.tokenizer.prompts import PromptBuilder
from services.runtime import exit_on_signals


def main(argv=None):
    settings = load_settings(sys.argv[1:] if argv is None else argv)
    wid = settings.tokenizer_id
    log = setup_logging(f"tokenizer.{wid}", settings.log_level)
    exit_on_signals()
    from engine.model_config import load_model_config
    from engine.tokenizer import load_tokenizer

    config = load_model_config(settings)
    builder = PromptBuilder(load_tokenizer(settings), config.max_model_len, config.vocab_size)
    ctx = zmq.Context()
    inbox = PullSocket(ctx, endpoint(settings, "tokenizer", wid), expect=TokenizeRequest)
    scheduler = PushSocket(ctx, endpoint(settings, "scheduler"))
    gateways = Peers(ctx, lambda gid: endpoint(settings, "gateway", gid))
    handled = errors = 0
    last_beat = last_report = 0.0
    log.info("tokenizer worker %d ready (max_model_len %d)", wid, config.max_model_len)
    while True:
        req = inbox.recv(timeout=settings.heartbeat_interval)
        if req is not None:
            handled += 1
            try:
                scheduler.send(builder.prepare(req))
                gateways.send(req.gateway_id, Tokenized(req.request_id, req.gateway_id))  # it is not ours any more
            except FerryError as e:
                errors += 1
                gateways.send(req.gateway_id, RequestError.of(req.request_id, req.gateway_id, e))
            except Exception as e:  # a bad template or tokenizer failure: tell the client, live on
                errors += 1
                log.exception("tokenizing %s failed", req.request_id)
                gateways.send(req.gateway_id, RequestError.of(
                    req.request_id, req.gateway_id, InvalidParameter(f"could not tokenize the request: {e}")))
        now = time.monotonic()
        if now - last_beat >= settings.heartbeat_interval:
            last_beat = now
            scheduler.send(Heartbeat("tokenizer", WorkerStatus(wid, os.getpid(), handled, errors)))
        if now - last_report >= 10.0 and handled:
            last_report = now
            log.info("load: %d requests handled, %d rejected", handled, errors)


if __name__ == "__main__":
    main()
