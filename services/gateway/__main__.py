"""A gateway: python -m services.gateway [--gateway-id G --port P ...]."""
from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from services.gateway.server import Gateway
from services.runtime import start_service


async def serve(settings, log):
    runner = web.AppRunner(Gateway(settings).app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    log.info("serving %s on http://%s:%d", settings.resolved_name(), settings.host, settings.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
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
