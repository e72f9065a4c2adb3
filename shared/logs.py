"""Logging setup shared by every service: one line per record, tagged with the service and pid.

Everything goes to stderr so supervisord (or the launcher's terminal) collects it as is.
"""
from __future__ import annotations

import logging
import os
import sys


def setup_logging(service: str, level: str = "INFO") -> logging.Logger:
    fmt = f"%(asctime)s %(levelname)s {service}[{os.getpid()}] %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is one line per request: too chatty at INFO for a busy gateway.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return logging.getLogger(f"ferry.{service}")
