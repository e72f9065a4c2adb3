"""The gateway's HTTP-edge hops of issue 17's first-token trace (--trace-first-token; shared/first_token_trace.py).

Installed only when tracing is on: a middleware, outermost, stamps when a request reached the gateway's handlers,
and the response-prepare signal logs that stamp (gw_http_in: the request's id exists only once the handler has
parsed it) and when the headers leave (gw_headers_out). A stream prepares its response once its first output is
there, and its first chunk follows at once, so gw_headers_out is the first token leaving the gateway. The engine
hops (gw_in, gw_reply_in) are logged by services.gateway.engine_client.EngineClient.
"""
from __future__ import annotations

from aiohttp import web

from services.gateway.request_log import ENGINE_ID
from shared.first_token_trace import FirstTokenTrace, now_us

ARRIVED = "ferry_arrived_us"


def install_first_token_hops(app: web.Application, trace: FirstTokenTrace | None) -> None:
    if trace is None:
        return

    @web.middleware
    async def stamp_arrival(request: web.Request, handler):
        request[ARRIVED] = now_us()
        return await handler(request)

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        rid = request.get(ENGINE_ID)  # generation requests only
        if rid is not None:
            trace.hop(rid, "gw_http_in", t_us=request[ARRIVED])
            trace.hop(rid, "gw_headers_out")

    app.middlewares.insert(0, stamp_arrival)
    app.on_response_prepare.append(on_prepare)
