"""A gateway: python -m services.gateway [--gateway-id G --port P ...]."""
from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from services.gateway.drain import drain
from services.gateway.server import Gateway
from services.runtime import orphaned, start_service


async def serve(settings, log):
    gateway = Gateway(settings)
    # shutdown_timeout: what aiohttp gives handlers after drain() has ended every request.
    runner = web.AppRunner(gateway.app(), handler_cancellation=True, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    log.info("serving %s on http://%s:%d", settings.resolved_name(), settings.host, settings.port)
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal():
        (hurry if stop.is_set() else stop).set()  # a second signal: stop waiting for requests in flight

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    await stop.wait()
    # Our parent gone (supervisord or ferry serve killed): the rest of the pipeline is going too; do not wait.
    await drain(gateway.client, 0.0 if orphaned() else settings.shutdown_timeout, hurry)
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
