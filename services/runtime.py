"""Process plumbing every service main shares: one start-up prologue."""
from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import signal
import sys

from shared.logs import setup_logging
from shared.model_groups import group_settings
from shared.security import UnsafePath
from shared.settings import Settings, load_settings
from shared.sockets import configure

# Services that run several instances tag their log lines with the instance: runner.1, tokenizer.0, gateway.2.
_INSTANCE_FIELD = {"runner": "rank", "tokenizer": "tokenizer_id", "gateway": "gateway_id"}
PR_SET_PDEATHSIG = 1
_parent = os.getppid()  # who started us: supervisord, `ferry serve`, a shell


def start_service(name: str, argv: list[str] | None = None, signals: bool = True) -> tuple[Settings, logging.Logger]:
    """Parse the settings flags (argv, default sys.argv[1:]), set up logging as `name[.instance]`, and,
    unless signals is False (the gateway's event loop handles them itself), install exit_on_signals().
    Every service also ends with its parent (die_with_parent)."""
    settings = group_settings(load_settings(sys.argv[1:] if argv is None else argv))  # --model-group: its own
    field = _INSTANCE_FIELD.get(name)
    tag = name if field is None else f"{name}.{getattr(settings, field)}"
    if settings.model_group >= 0:  # one of several models: say which
        tag = f"{tag}@{settings.resolved_name()}"
    log = setup_logging(tag, settings.log_level, settings.log_format)
    try:
        configure(settings)  # a run directory others own or can enter: refuse to start
    except (UnsafePath, OSError) as e:
        log.error("refusing to start: %s", e)
        raise SystemExit(f"ferry {name}: refusing to start: {e}") from None
    if signals:
        exit_on_signals()
    die_with_parent(log)
    return settings, log


def die_with_parent(log: logging.Logger) -> None:
    """SIGTERM when the process that started us dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG): a killed
    supervisord or `ferry serve` leaves no orphans holding the port and the sockets. A parent already gone
    before we armed it: exit now."""
    global _parent
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # not Linux: supervisord's stopasgroup/killasgroup still stop us the normal way
        return
    if orphaned():
        log.error("the parent process is gone; exiting")
        sys.exit(0)
    _parent = os.getppid()


def orphaned() -> bool:
    """Our parent is gone (we were handed to init or a subreaper): draining would wait for nobody."""
    return os.getppid() != _parent


def exit_on_signals():
    """SIGTERM (supervisord, the launcher) and SIGINT (Ctrl-C) end the process quietly; SIGUSR1 dumps stacks."""

    def stop(signum, frame):
        if orphaned():  # the parent died (PR_SET_PDEATHSIG): nobody to drain for; skip a second of teardown
            logging.shutdown()  # flush the log first
            os._exit(0)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # `kill -USR1 <pid>` prints every thread's stack to the log: where a process that seems stuck waits.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
