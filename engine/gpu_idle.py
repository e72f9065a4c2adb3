"""How long the GPU waits between one step and the next, from CUDA events.

A step's start event is recorded just before its first device work is queued, its end event after
its sampled tokens' copy to the host. The gap from one step's end to the next one's start is time
the GPU had nothing queued: host work (scheduling, messages, input preparation) that the overlap of
steps did not hide. Steps that follow each other with gaps under `pause_ms` form a run (a gap longer
than that is the server waiting for requests, not overhead); each run is reported once it ends.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class IdleRun:
    steps: int = 0
    busy_ms: float = 0.0  # from each step's start to its end (its own host gaps included)
    idle_ms: float = 0.0  # between steps
    max_gap_ms: float = 0.0

    @property
    def idle_fraction(self) -> float:
        total = self.busy_ms + self.idle_ms
        return self.idle_ms / total if total else 0.0

    def __str__(self) -> str:
        mean_gap = self.idle_ms / max(1, self.steps - 1)
        return (f"GPU run of {self.steps} steps: {self.busy_ms:.0f} ms busy, idle {100 * self.idle_fraction:.1f}% "
                f"between steps (mean gap {mean_gap:.3f} ms, max {self.max_gap_ms:.2f} ms)")


class GpuIdleMeter:
    def __init__(self, pause_ms: float = 50.0, min_steps: int = 20):
        self.pause_ms, self.min_steps = pause_ms, min_steps
        self.run = IdleRun()
        self._prev_end = None
        self.busy_ms_total = 0.0  # every step's device time since the start: /metrics' idle share

    def step_done(self, start, end) -> IdleRun | None:
        """Account a finished step (its events have completed); returns a run that just ended, if one of at
        least min_steps steps did."""
        ended = None
        if self._prev_end is not None:
            gap = self._prev_end.elapsed_time(start)
            if gap > self.pause_ms:
                ended, self.run = self.run, IdleRun()
            else:
                gap = max(0.0, gap)
                self.run.idle_ms += gap
                self.run.max_gap_ms = max(self.run.max_gap_ms, gap)
        busy = start.elapsed_time(end)
        self.run.busy_ms += busy
        self.busy_ms_total += busy
        self.run.steps += 1
        self._prev_end = end
        return ended if ended is not None and ended.steps >= self.min_steps else None
