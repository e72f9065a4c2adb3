"""Process plumbing every service main shares."""
from __future__ import annotations

import faulthandler
import signal
import sys


def exit_on_signals():
    """SIGTERM (supervisord, the launcher) and SIGINT (Ctrl-C) end the process quietly; SIGUSR1 dumps stacks."""

    def stop(signum, frame):
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # `kill -USR1 <pid>` prints every thread's stack to the log: where a process that seems stuck waits.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
