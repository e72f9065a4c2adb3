"""Issue 17's first-token trace (--trace-first-token): each process logs the wall-clock time at which a
request's first token passes each of its hops, in one line format that benchmarks/first_token_hops.py reads:

    first-token rid=<request id> hop=<name> t_us=<CLOCK_REALTIME, microseconds> [step=<step id>]
    first-token step=<step id> hop=<name> t_us=<...>          (the runner: it knows steps, not requests)

The scheduler names the step that samples a request's first token, so the tool joins the runner's lines to it.
Off (the default) a service holds None instead of a FirstTokenTrace and checks only that, once per request
(or per step in the runner): nothing is done per token.
"""
from __future__ import annotations

import logging
import time

PREFIX = "first-token"


class FirstTokenTrace:
    def __init__(self, log: logging.Logger):
        self.log = log

    def hop(self, rid: str, name: str, step: int | None = None, t_us: int | None = None) -> None:
        """t_us: when it happened, if not now (a hop timed before the request had its id)."""
        t_us = now_us() if t_us is None else t_us
        if step is None:
            self.log.info("%s rid=%s hop=%s t_us=%d", PREFIX, rid, name, t_us)
        else:
            self.log.info("%s rid=%s hop=%s t_us=%d step=%d", PREFIX, rid, name, t_us, step)

    def step_hop(self, step: int, name: str) -> None:
        self.log.info("%s step=%d hop=%s t_us=%d", PREFIX, step, name, now_us())


def now_us() -> int:
    return time.time_ns() // 1000


def first_token_trace(settings, log: logging.Logger) -> FirstTokenTrace | None:
    """The trace when the setting is on, else None (what every hook checks)."""
    return FirstTokenTrace(log) if getattr(settings, "trace_first_token", False) else None
