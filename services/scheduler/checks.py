"""Plausibility checks on what reaches the scheduler: a forged or stale frame is logged and dropped, never acted on.

The sockets keep outsiders out (a private run directory; CURVE over tcp). These checks are for frames that do
arrive but cannot be what they claim: a result of another session, a heartbeat from a process that is not
there. A result or restart is believed only when it proves it heard this session's pings, which only the
runner ranks receive.
"""
from __future__ import annotations

import logging
import os

from shared.messages import Heartbeat, StepResult

log = logging.getLogger("ferry.scheduler")


def result_is_ours(result: StepResult, session: str) -> bool:
    """A result of this session from rank 0 (the only rank that answers); others are logged and dropped."""
    if result.session != session or result.rank != 0:
        log.warning("dropped a result for step %s from rank %s of session %.12r (ours is %.12s)%s", result.step_id,
                    result.rank, result.session, session, f": {result.error}" if result.error else "")
        return False
    return True


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


MAX_TOKENIZERS = 900  # the tcp endpoints' range (shared.sockets): no worker id beyond it can be addressed


def heartbeat_is_plausible(beat: Heartbeat, same_host: bool) -> bool:
    """A worker id the gateways can address, and (ipc: every process on this host) a pid that is alive. A live
    pid proves little (any process has one): with ipc only this user can send at all, see the failure model."""
    if beat.service == "tokenizer" and not 0 <= beat.worker.id < MAX_TOKENIZERS:
        log.warning("dropped a heartbeat from tokenizer %d", beat.worker.id)
        return False
    if same_host and not pid_alive(beat.worker.pid):
        log.warning("dropped a %s heartbeat naming pid %d: no such process", beat.service, beat.worker.pid)
        return False
    return True
