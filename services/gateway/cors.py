"""CORS for --allowed-origins (comma-separated origins, or "*"); with none configured, no CORS headers at all.

A preflight (OPTIONS with Origin and Access-Control-Request-Method) from an allowed origin is answered
204 here, before the API key check: browsers send preflights without credentials. Every other answer to
an allowed origin, errors and streams included, carries Access-Control-Allow-Origin (set as the
response is prepared, since a stream's headers leave before its handler returns).
"""
from __future__ import annotations

import re

from aiohttp import web

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type"
MAX_AGE = "600"
# A preflight's requested headers are allowed back when they are plain header names: browser SDKs send their own
# (the openai package's x-stainless-*), and a fixed list would fail their preflight.
HEADER_LIST = re.compile(r"^[A-Za-z0-9-]{1,64}(\s*,\s*[A-Za-z0-9-]{1,64}){0,31}$")


def allowed_headers(requested: str | None) -> str:
    requested = (requested or "").strip()
    return f"{ALLOW_HEADERS}, {requested}" if requested and HEADER_LIST.match(requested) else ALLOW_HEADERS


class Cors:
    def __init__(self, allowed_origins: str):
        origins = [o.strip().rstrip("/") for o in allowed_origins.split(",") if o.strip()]
        self.any = "*" in origins
        self.origins = frozenset(o for o in origins if o != "*")

    @property
    def enabled(self) -> bool:
        return self.any or bool(self.origins)

    def allow(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin value for this Origin header, or None."""
        if not origin:
            return None
        if self.any:
            return "*"
        return origin if origin in self.origins else None

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        allowed = self.allow(request.headers.get("Origin"))
        if (request.method == "OPTIONS" and allowed is not None
                and "Access-Control-Request-Method" in request.headers):
            return web.Response(status=204, headers={
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": allowed_headers(request.headers.get("Access-Control-Request-Headers")),
                "Access-Control-Max-Age": MAX_AGE,
            })  # Access-Control-Allow-Origin is added by on_prepare, as for every answer
        return await handler(request)

    async def on_prepare(self, request: web.Request, response: web.StreamResponse):
        allowed = self.allow(request.headers.get("Origin"))
        if allowed is not None:
            response.headers["Access-Control-Allow-Origin"] = allowed
            if allowed != "*":
                response.headers["Vary"] = "Origin"

    def install(self, app: web.Application):
        if self.enabled:
            app.on_response_prepare.append(self.on_prepare)
