"""A gateway: python -m services.gateway [--gateway-id G --port P ...]."""
from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from services.gateway.connections import SPARE_FDS, GuardedSite, raise_fd_limit
from services.gateway.drain import drain
from services.gateway.first_token_hops import install_first_token_hops
from services.gateway.server import Gateway
from services.runtime import orphaned, start_service
from shared.first_token_trace import first_token_trace


async def serve(settings, log):
    fds = raise_fd_limit()
    gateway = Gateway(settings)
    gateway.guard.max_connections = max(1, min(settings.max_connections, fds - SPARE_FDS))
    # aiohttp's own limits on the request head; its keep-alive timer only backs up the guard's read timeout.
    # shutdown_timeout: what aiohttp gives handlers after drain() has ended every request.
    app = gateway.app()
    install_first_token_hops(app, first_token_trace(settings, log))  # issue 17: only with --trace-first-token
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5.0,
                           keepalive_timeout=max(75.0, settings.http_read_timeout),
                           max_line_size=settings.max_header_bytes, max_field_size=settings.max_header_bytes)
    await runner.setup()
    await GuardedSite(runner, gateway.guard, settings.host, settings.port).start()
    log.info("serving %s on http://%s:%d", ", ".join(s.name for s in gateway.router.served), settings.host,
             settings.port)
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal():
        (hurry if stop.is_set() else stop).set()  # a second signal: stop waiting for requests in flight

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    await stop.wait()
    # Our parent gone (supervisord or ferry serve killed): the rest of the pipeline is going too; do not wait.
    timeout = 0.0 if orphaned() else settings.shutdown_timeout
    await asyncio.gather(*(drain(client, timeout, hurry) for client in gateway.router.clients))
    await runner.cleanup()


def main(argv=None):
    settings, log = start_service("gateway", argv, signals=False)  # serve() hands SIGINT/SIGTERM to the loop
    try:
        import uvloop
        uvloop.run(serve(settings, log))
    except ImportError:
        asyncio.run(serve(settings, log))


if __name__ == "__main__":
    main()
