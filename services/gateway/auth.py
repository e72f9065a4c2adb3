"""API keys: `Authorization: Bearer <key>` on every route but the open ones (/health, and /metrics unless
--metrics-require-key).

The check is a middleware that sees every request, routed or not (a 404 needs a key too). A request is
let through without a key only when its raw path, its decoded path and the route it matched are all
exactly an open path, so no spelling of another route (`//v1/models`, `/V1/models`, `/%761/models`,
dot segments, a trailing slash) and no Host header can pass for an open one. Keys are compared in
constant time against every configured key, and never logged.
"""
from __future__ import annotations

import hmac
import logging

from aiohttp import web

from shared.errors import InvalidAPIKey

log = logging.getLogger("ferry.gateway")
API_KEY = "ferry.api_key"  # where the middleware leaves the caller's key on the request (for rate limits)


def load_keys(settings) -> list[bytes]:
    """The configured keys: --api-key (comma-separated) and --api-key-file (one a line, '#' comments)."""
    keys = [k.strip() for k in settings.api_key.split(",")]
    if settings.api_key_file:
        with open(settings.api_key_file, encoding="utf-8") as fh:
            keys += [line.strip() for line in fh if not line.lstrip().startswith("#")]
    return [k.encode() for k in dict.fromkeys(k for k in keys if k)]


def open_paths(settings) -> frozenset[str]:
    return frozenset({"/health"} if settings.metrics_require_key else {"/health", "/metrics"})


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def key_matches(token: str, keys: list[bytes]) -> bool:
    """Constant time in the key's content: every configured key is compared, whatever matched first."""
    given = token.encode("utf-8", "surrogateescape")
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key)
    return found


def is_open(request: web.Request, paths: frozenset[str]) -> bool:
    if request.method not in ("GET", "HEAD"):
        return False
    raw = request.raw_path.split("?", 1)[0]
    if raw not in paths or request.path != raw:
        return False
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource is not None and resource.canonical == raw


def api_key_middleware(keys: list[bytes], paths: frozenset[str]):
    @web.middleware
    async def check_api_key(request: web.Request, handler):
        if not keys or is_open(request, paths):
            return await handler(request)
        token = bearer_token(request)
        if token is None:
            err = InvalidAPIKey("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
        elif not key_matches(token, keys):
            err = InvalidAPIKey("Incorrect API key provided.")
        else:
            request[API_KEY] = token
            return await handler(request)
        return web.json_response(err.to_dict(), status=err.status, headers=err.headers)

    return check_api_key
