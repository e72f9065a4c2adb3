"""Histogram buckets as vLLM's Prometheus metrics use them, and a histogram that takes many values at once.

The engine and the gateways observe into BucketHistogram (no lock, no labels: each owner is one thread) and
export it as a prometheus HistogramMetricFamily; the scheduler's travel to the gateways as BucketCounts.
Bounds are upper limits (Prometheus `le`); the +Inf bucket is implicit (the last count).
"""
from __future__ import annotations

import bisect

import numpy as np

# vLLM's (vllm/v1/metrics/loggers.py), so that dashboards ported from vLLM read the same quantiles.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)
REQUEST_TIME_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                        240.0, 480.0, 960.0, 1920.0, 7680.0)
N_BUCKETS = (1, 2, 5, 10, 20)


def buckets_1_2_5(limit: int) -> tuple[int, ...]:
    """1, 2, 5, 10, 20, 50, ... up to limit (vLLM's build_1_2_5_buckets: token counts)."""
    out, mantissas, exponent = [], (1, 2, 5), 0
    while True:
        for m in mantissas:
            value = m * 10 ** exponent
            if value > limit:
                return tuple(out)
            out.append(value)
        exponent += 1


def step_token_buckets(max_batched_tokens: int) -> tuple[int, ...]:
    """Tokens per engine step: powers of two up to the step budget (vLLM uses its CUDA-graph sizes)."""
    out, b = [1], 8
    while b < max_batched_tokens:
        out.append(b)
        b *= 2
    out.append(max_batched_tokens)
    return tuple(out)


class BucketHistogram:
    __slots__ = ("bounds", "counts", "total", "_array")

    def __init__(self, bounds):
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0
        self._array = np.asarray(self.bounds, np.float64)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def observe_many(self, values) -> None:
        if len(values) > 32:  # a long request's gaps: one numpy pass instead of a bisect each
            array = np.asarray(values, np.float64)
            found = np.bincount(np.searchsorted(self._array, array, side="left"), minlength=len(self.counts))
            self.add(found.tolist(), float(array.sum()))
            return
        counts, bounds, find = self.counts, self.bounds, bisect.bisect_left
        for v in values:
            counts[find(bounds, v)] += 1
        self.total += sum(values)

    def add(self, counts, total: float) -> None:
        """Fold in another histogram of the same bounds (one received from another process)."""
        for i, c in enumerate(counts):
            self.counts[i] += c
        self.total += total

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus' buckets: (le, observations at or below it), +Inf last."""
        out, running = [], 0
        for bound, c in zip(self.bounds + (float("inf"),), self.counts):
            running += c
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out
