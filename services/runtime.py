"""Process plumbing every service main shares: one start-up prologue."""
from __future__ import annotations

import faulthandler
import logging
import signal
import sys

from shared.logs import setup_logging
from shared.security import UnsafePath
from shared.settings import Settings, load_settings
from shared.sockets import configure

# Services that run several instances tag their log lines with the instance: runner.1, tokenizer.0, gateway.2.
_INSTANCE_FIELD = {"runner": "rank", "tokenizer": "tokenizer_id", "gateway": "gateway_id"}


def start_service(name: str, argv: list[str] | None = None, signals: bool = True) -> tuple[Settings, logging.Logger]:
    """Parse the settings flags (argv, default sys.argv[1:]), set up logging as `name[.instance]`, and,
    unless signals is False (the gateway's event loop handles them itself), install exit_on_signals()."""
    settings = load_settings(sys.argv[1:] if argv is None else argv)
    field = _INSTANCE_FIELD.get(name)
    log = setup_logging(name if field is None else f"{name}.{getattr(settings, field)}", settings.log_level)
    try:
        configure(settings)  # a run directory others own or can enter: refuse to start
    except (UnsafePath, OSError) as e:
        log.error("refusing to start: %s", e)
        raise SystemExit(f"ferry {name}: refusing to start: {e}") from None
    if signals:
        exit_on_signals()
    return settings, log


def exit_on_signals():
    """SIGTERM (supervisord, the launcher) and SIGINT (Ctrl-C) end the process quietly; SIGUSR1 dumps stacks."""

    def stop(signum, frame):
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # `kill -USR1 <pid>` prints every thread's stack to the log: where a process that seems stuck waits.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
