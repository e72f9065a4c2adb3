"""Process plumbing every service main shares."""
from __future__ import annotations

import signal
import sys


def exit_on_signals():
    """SIGTERM (supervisord, the launcher) and SIGINT (Ctrl-C) end the process quietly."""

    def stop(signum, frame):
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
