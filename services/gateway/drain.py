"""SIGTERM to a gateway: stop taking work, let what is in flight finish, end the rest cleanly.

While draining, /health and new requests answer 503 (load balancers move on; the listening socket
stays open so nobody sees a refused connection), requests in flight run on for up to
shutdown_timeout, and whatever is still open then ends with an error event (a 503 body for a
request not streaming yet). Then the process exits 0.
"""
from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("ferry.gateway")


async def drain(client, timeout: float, hurry: asyncio.Event | None = None) -> int:
    """client: services.gateway.engine_client.EngineClient. Returns how many requests had to be ended.
    hurry (a second signal, or the parent gone) ends the wait early."""
    client.draining = True
    deadline = time.monotonic() + timeout
    if client.runs:
        log.info("draining: %d requests in flight, up to %.0fs", len(client.runs), timeout)
    while client.runs and time.monotonic() < deadline and not (hurry is not None and hurry.is_set()):
        await asyncio.sleep(0.05)
    left = list(client.runs)
    for rid in left:
        client.end(rid, "the server is shutting down; retry the request")
    if left:
        log.warning("drained: ended %d requests still in flight", len(left))
        await asyncio.sleep(0.2)  # their handlers write the error event before the connections close
    else:
        log.info("drained: every request finished")
    return len(left)
