"""The gateway's TCP edge: read timeouts and a connection limit, so that slow or half-open clients
(slowloris) cannot hold the server.

Every client connection is tracked (GuardedProtocol wraps aiohttp's own protocol). A connection with no
request being handled is idle: it must bring a complete request head within `http_read_timeout` of
opening or of its last answer, else it is closed. A request's body must arrive within the same time of
its head. Time is counted on a clock that stops while the event loop lags (`ConnectionGuard.clock`), so
that an overloaded gateway, slow to read what clients did send, does not drop them for its own slowness.
Past `max_connections` open connections, a new one closes the longest-idle connection to make room (a
connection without a request in progress loses nothing), or is itself closed when every connection is
busy. Nothing here touches a request whose body has arrived.
"""
from __future__ import annotations

import asyncio
import logging
import resource
import time

from aiohttp import web

log = logging.getLogger("ferry.gateway")
SPARE_FDS = 128  # file descriptors kept for sockets to the pipeline, logs and the like


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (each connection is a descriptor); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


class Conn:
    __slots__ = ("transport", "idle_since", "busy", "reading", "read_since")

    def __init__(self, transport, now: float):
        self.transport, self.idle_since, self.busy = transport, now, 0
        self.reading: web.Request | None = None  # a request whose body has not all arrived yet
        self.read_since = now


class ConnectionGuard:
    def __init__(self, read_timeout: float, max_connections: int):
        self.read_timeout = read_timeout
        self.max_connections = max(1, max_connections)
        self.conns: dict[object, Conn] = {}  # transport -> its state, oldest first
        self.closed_idle = 0  # counters, for logs and tests
        self.evicted = 0
        self.refused = 0
        self._sweeper: asyncio.Task | None = None
        self.clock = 0.0  # seconds of the loop's own time, advanced by the sweeper at most `period` a tick
        self.period = min(1.0, max(0.05, read_timeout / 4))

    # ------------------------------------------------------------ connections

    def protocol_factory(self, inner_factory):
        return lambda: GuardedProtocol(inner_factory(), self)

    def opened(self, transport) -> bool:
        """A new connection; False when it was refused (every slot busy)."""
        if len(self.conns) >= self.max_connections and not self._evict_one():
            self.refused += 1
            transport.abort()
            return False
        self.conns[transport] = Conn(transport, self.clock)
        return True

    def closed(self, transport):
        self.conns.pop(transport, None)

    def _evict_one(self) -> bool:
        victim = min((c for c in self.conns.values() if c.busy == 0), key=lambda c: c.idle_since, default=None)
        if victim is None:
            return False
        self.evicted += 1
        self.conns.pop(victim.transport, None)
        victim.transport.abort()
        return True

    def start(self):
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def stop(self):
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

    async def _sweep_loop(self):
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.period)
            now = time.monotonic()
            self.clock += min(now - last, self.period)  # a late wake-up is the loop's lag, not the client's
            last = now
            self.sweep()

    def sweep(self):
        """Close every connection that has waited past the read timeout for a complete request head or body
        (the handler of a body cut off sees its connection go: handler_cancellation)."""
        now, limit = self.clock, self.read_timeout
        late = [c for c in self.conns.values() if now - (c.read_since if c.busy else c.idle_since) > limit
                and (c.busy == 0 or self._body_pending(c))]
        for c in late:
            self.conns.pop(c.transport, None)
            c.transport.abort()
        if late:
            self.closed_idle += len(late)
            log.info("closed %d connections that sent no complete request in %.1fs", len(late), limit)

    @staticmethod
    def _body_pending(c: Conn) -> bool:
        if c.reading is not None and c.reading.content.is_eof():
            c.reading = None
        return c.reading is not None

    # ------------------------------------------------------------ requests

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        """Marks the connection busy while its request is handled, and gives the body read_timeout to arrive."""
        conn = self.conns.get(request.transport)
        if conn is None:
            return await handler(request)
        conn.busy += 1
        if request.body_exists and not request.content.is_eof():
            conn.reading, conn.read_since = request, self.clock
        try:
            return await handler(request)
        finally:
            conn.busy -= 1
            conn.reading, conn.idle_since = None, self.clock


class GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the guard told when it opens and closes."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard):
        self.inner, self.guard, self.transport, self.live = inner, guard, None, False

    def connection_made(self, transport):
        self.transport = transport
        self.live = self.guard.opened(transport)
        if self.live:
            self.inner.connection_made(transport)

    def data_received(self, data):
        if self.live:
            self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received() if self.live else None

    def connection_lost(self, exc):
        self.guard.closed(self.transport)
        if self.live:
            self.live = False
            self.inner.connection_lost(exc)

    def pause_writing(self):
        self.inner.pause_writing()

    def resume_writing(self):
        self.inner.resume_writing()


class GuardedSite(web.BaseSite):
    """web.TCPSite with every connection handed through a ConnectionGuard."""

    def __init__(self, runner: web.AppRunner, guard: ConnectionGuard, host: str, port: int, backlog: int = 1024):
        super().__init__(runner, backlog=backlog)
        self._guard, self._host, self._port = guard, host, port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self):
        await super().start()
        factory = self._guard.protocol_factory(self._runner.server)
        self._server = await asyncio.get_running_loop().create_server(
            factory, self._host, self._port, backlog=self._backlog, reuse_address=True)
