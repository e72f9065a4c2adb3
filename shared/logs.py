"""Logging setup shared by every service: one line per record, tagged with the service and pid.

Everything goes to stderr so supervisord (or the launcher's terminal) collects it as is. With
--log-format json each record is one JSON object (time, level, service, pid, logger, message, and the
record's own fields where it has some: the gateway's request lines, services/gateway/request_log.py).
"""
from __future__ import annotations

import json
import logging
import os
import sys

LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record), "level": record.levelname, "service": self.service,
               "pid": os.getpid(), "logger": record.name, "message": record.getMessage()}
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(service: str, level: str = "INFO", log_format: str = "text") -> logging.Logger:
    if log_format not in LOG_FORMATS:
        raise SystemExit(f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {service}[{os.getpid()}] %(name)s: "
                                               "%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is one line per request: too chatty at INFO for a busy gateway.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return logging.getLogger(f"ferry.{service}")
