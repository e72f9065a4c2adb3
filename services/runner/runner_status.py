"""A runner rank's numbers for /metrics: steps, step time, idle share, GPU memory (issue 16).

The main thread adds each step's host time (once per step, nothing per token); the heartbeat thread turns
the totals into a RunnerStatus. Idle share over the last heartbeat interval: on CUDA from the step events
the runner records anyway (engine.gpu_idle.GpuIdleMeter: device time with nothing queued), on the CPU the
share of wall time no step was running. GPU memory is the device's (cudaMemGetInfo: every process on the
GPU); on the CPU both are 0, and the device label says cpu.
"""
from __future__ import annotations

import time

from shared.messages import RunnerStatus


def _gpu_memory(device) -> tuple[int, int]:
    if device is None or getattr(device, "type", "cpu") != "cuda":
        return 0, 0
    try:
        import torch

        free, total = torch.cuda.mem_get_info(device)
        return total - free, total
    except Exception:  # a query must never take the heartbeat down
        return 0, 0


class RunnerMeter:
    def __init__(self, rank: int, runner, now: float | None = None):
        self.rank, self.runner = rank, runner
        self.device = getattr(runner, "device", None)
        self.steps = 0
        self.step_seconds = 0.0
        self._last = (time.monotonic() if now is None else now, 0.0, 0.0)  # wall, host busy, device busy

    def step_done(self, seconds: float) -> None:
        self.steps += 1
        self.step_seconds += seconds

    def _device_busy(self) -> float | None:
        meter = getattr(self.runner, "idle_meter", None)
        return None if meter is None else meter.busy_ms_total / 1000.0

    def status(self, now: float | None = None) -> RunnerStatus:
        now = time.monotonic() if now is None else now
        device_busy = self._device_busy()
        wall0, host0, dev0 = self._last
        busy = (device_busy - dev0) if device_busy is not None else (self.step_seconds - host0)
        span = now - wall0
        idle = min(1.0, max(0.0, 1.0 - busy / span)) if span > 0 else 1.0
        self._last = (now, self.step_seconds, device_busy or 0.0)
        used, total = _gpu_memory(self.device)
        kind = getattr(self.device, "type", "cpu")
        return RunnerStatus(self.rank, kind, self.steps, self.step_seconds, idle, used, total)
