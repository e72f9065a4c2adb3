"""One log line per finished request, and the request id every process's lines about it carry.

The id is the client's X-Request-Id (1 to 128 of A-Z a-z 0-9 . _ : -; anything else is a 400 naming the
header) or a fresh one; the response carries it back in X-Request-Id. Inside ferry the request is known by
`<prefix><id>` (a made id) or `<prefix><id>-<8 random hex>` (a client's: ids must be unique in the engine, and
one client must not be able to name, and so abort, another's request), which is what every process logs.
The line (logger ferry.requests) says: request id, engine id, model, endpoint, status, prompt and generated
tokens, TTFT, latency, finish reason(s) and the client's address; as JSON fields with --log-format json.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from aiohttp import web

from shared.errors import InvalidParameter

log = logging.getLogger("ferry.requests")
REQUEST_ID = "ferry_request_id"  # keys on the aiohttp request
CLIENT_ID = "ferry_client_request_id"
ENGINE_ID = "ferry_engine_request_id"
OBSERVER = "ferry_request_observer"  # a metrics_requests.RequestObserver, set by the generation handler
_VALID_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
CLIENT_CLOSED = 499  # nginx's status for a client that went away before the answer


def engine_request_id(request: web.Request, prefix: str) -> str:
    """The id the pipeline knows this request by (see the module doc)."""
    rid = request.get(REQUEST_ID) or uuid.uuid4().hex
    engine_id = prefix + rid + (f"-{uuid.uuid4().hex[:8]}" if request.get(CLIENT_ID) else "")
    request[ENGINE_ID] = engine_id
    return engine_id


class RequestLog:
    def __init__(self, model: str, metrics):
        self.model, self.metrics = model, metrics  # metrics: services.gateway.metrics_requests.RequestMetrics

    def install(self, app: web.Application) -> None:
        app.on_response_prepare.append(self._add_header)

    @staticmethod
    async def _add_header(request: web.Request, response: web.StreamResponse) -> None:
        rid = request.get(REQUEST_ID)
        if rid is not None:
            response.headers["X-Request-Id"] = rid

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        if request.method != "POST":  # scrapes, probes, model lists: not requests worth a line each
            return await handler(request)
        given = request.headers.get("X-Request-Id")
        if given is not None and not _VALID_ID.fullmatch(given):
            err = InvalidParameter("X-Request-Id must be 1 to 128 letters, digits or . _ : -", param="X-Request-Id")
            return web.json_response(err.to_dict(), status=err.status)
        request[REQUEST_ID] = given or uuid.uuid4().hex
        request[CLIENT_ID] = given is not None
        start, status = time.monotonic(), 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            status = CLIENT_CLOSED
            raise
        finally:
            self._record(request, status, time.monotonic() - start)

    def _record(self, request: web.Request, status: int, latency: float) -> None:
        route = request.match_info.route.resource
        endpoint = route.canonical if route is not None else "unmatched"  # a bounded label: routes, not paths
        self.metrics.series(self.model).http[(endpoint, str(status))] += 1
        observer = request.get(OBSERVER)
        summary = observer.summary if observer is not None else {}
        fields = {"request_id": request[REQUEST_ID], "engine_id": request.get(ENGINE_ID), "model": self.model,
                  "endpoint": endpoint, "status": status, "prompt_tokens": summary.get("prompt_tokens"),
                  "generated_tokens": summary.get("generated_tokens"), "ttft": summary.get("ttft"),
                  "latency": round(latency, 6), "finish_reason": summary.get("finish_reason"),
                  "client": request.remote}
        text = " ".join(f"{k}={'-' if v is None else v}" for k, v in fields.items())
        log.info("request %s", text, extra={"fields": fields})
