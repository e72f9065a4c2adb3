"""The engine-wide series (ferry_X for vLLM's vllm:X), from the scheduler's EngineStats, labelled model_name.

The scheduler publishes the same EngineStats to every gateway. So that a scrape of every gateway adds up to
one coherent set, only the gateway the scheduler names (EngineStats.reporter_gateway: the lowest live id)
exports these; the others export their own request series only (services.gateway.metrics_requests). The
scheduler's own health is this gateway's view of it: the age of its last EngineStats.
"""
from __future__ import annotations

import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from shared.buckets import BucketHistogram
from shared.messages import EngineStats, SchedulerCounters


class EngineCollector:
    def __init__(self, gateway_id: int, model: str, peer_timeout: float = 5.0):
        self.gateway_id, self.model, self.peer_timeout = gateway_id, model, peer_timeout
        self.stats: EngineStats | None = None  # the last that carried metrics (scheduler_pid set)
        self.stats_at = 0.0  # when any stats last came: the scheduler's own health
        self.counters = SchedulerCounters()  # the last engine's: kept while none runs
        self.scheduler_pid = 0
        self.scheduler_restarts = 0

    def update(self, stats: EngineStats, now: float | None = None) -> None:
        self.stats_at = time.monotonic() if now is None else now
        if stats.engine is not None:
            self.counters = stats.engine
        if not stats.scheduler_pid:
            return  # counters only (right after a request ended): histograms and health come once a second
        if self.scheduler_pid and stats.scheduler_pid != self.scheduler_pid:
            self.scheduler_restarts += 1
        self.scheduler_pid, self.stats = stats.scheduler_pid, stats

    def reporting(self) -> bool:
        """Stats came, and this gateway is the one named to export them (or none is named yet)."""
        reporter = self.stats.reporter_gateway if self.stats is not None else -1
        return self.stats_at > 0 and reporter in (-1, self.gateway_id)

    def collect(self):
        if not self.reporting():
            return
        stats, c, m = self.stats, self.counters, [self.model]
        gauges = [("num_requests_running", "Sequences running in the engine", c.num_running),
                  ("num_requests_waiting", "Sequences waiting to be scheduled", c.num_waiting),
                  ("kv_cache_usage_perc", "Share of KV cache blocks in use (0 to 1)",
                   1.0 - c.num_free_blocks / c.num_total_blocks if c.num_total_blocks else 0.0)]
        for name, doc, value in gauges:
            yield _last(GaugeMetricFamily, name, doc, m, value)
        counters = [("prefix_cache_queries", "Prompt tokens looked up in the prefix cache", c.prefix_queried_tokens),
                    ("prefix_cache_hits", "Prompt tokens found in the prefix cache", c.prefix_hit_tokens),
                    ("num_preemptions", "Sequences preempted (recomputed later)", c.num_preemptions)]
        for name, doc, value in counters:
            yield _last(CounterMetricFamily, name, doc, m, value)
        if stats is None:
            return
        for h in stats.histograms:
            family = HistogramMetricFamily("ferry_" + h.name, "Engine-side, per sequence (steps: per step)",
                                           labels=["model_name"])
            hist = BucketHistogram(h.bounds)
            hist.add(h.counts, h.total)
            family.add_metric(m, hist.cumulative(), hist.total)
            yield family
        handled = CounterMetricFamily("ferry_tokenizer_requests", "Requests each live tokenizer worker has taken",
                                      labels=["model_name", "id"])
        for w in stats.tokenizers:
            handled.add_metric([self.model, str(w.id)], w.requests_handled)
        yield handled
        yield from self._processes(stats)
        yield from self._runners(stats)

    def _processes(self, stats: EngineStats):
        labels = ["model_name", "service", "id"]
        up = GaugeMetricFamily("ferry_process_up", "1 while the process beats (heartbeats)", labels=labels)
        age = GaugeMetricFamily("ferry_process_seconds_since_heartbeat", "-1: never heard from", labels=labels)
        restarts = CounterMetricFamily("ferry_process_restarts", "Restarts seen (a new pid under the same id)",
                                       labels=labels)
        since = time.monotonic() - self.stats_at
        up.add_metric([self.model, "scheduler", "0"], 1.0 if since <= self.peer_timeout else 0.0)
        age.add_metric([self.model, "scheduler", "0"], since)
        restarts.add_metric([self.model, "scheduler", "0"], self.scheduler_restarts)
        for p in stats.processes:
            key = [self.model, p.service, str(p.id)]
            up.add_metric(key, 1.0 if p.up and since <= self.peer_timeout else 0.0)
            age.add_metric(key, p.seconds_since_heartbeat + since if p.seconds_since_heartbeat >= 0 else -1.0)
            restarts.add_metric(key, p.restarts)
        yield from (up, age, restarts)

    def _runners(self, stats: EngineStats):
        labels = ["model_name", "rank", "device"]
        families = {
            "gpu_memory_used_bytes": GaugeMetricFamily("ferry_runner_gpu_memory_used_bytes",
                                                       "Device memory in use on the rank's GPU (0 on the CPU)",
                                                       labels=labels),
            "gpu_memory_total_bytes": GaugeMetricFamily("ferry_runner_gpu_memory_total_bytes",
                                                        "The rank's GPU memory (0 on the CPU)", labels=labels),
            "idle_share": GaugeMetricFamily("ferry_runner_gpu_idle_share",
                                            "Share of the last heartbeat interval the device had no step (CPU: "
                                            "no step running)", labels=labels),
            "steps": CounterMetricFamily("ferry_runner_steps", "Engine steps run", labels=labels),
            "step_seconds": CounterMetricFamily("ferry_runner_step_seconds", "Host time in steps", labels=labels),
        }
        for r in stats.runners:
            key = [self.model, str(r.rank), r.device]
            for attr, family in families.items():
                family.add_metric(key, getattr(r, attr))
        yield from families.values()


class MergedEngineSeries:
    """Several models' engine series in one exposition: each metric family once, holding every model's samples
    (their model_name labels differ). Two collectors yielding the same family would expose it twice."""

    def __init__(self, collectors: list[EngineCollector]):
        self.collectors = collectors

    def collect(self):
        families = {}
        for collector in self.collectors:
            for family in collector.collect():
                if family.name in families:
                    families[family.name].samples.extend(family.samples)
                else:
                    families[family.name] = family
        yield from families.values()


def _last(kind, name: str, doc: str, labels: list[str], value: float):
    family = kind("ferry_" + name, doc, labels=["model_name"])
    family.add_metric(labels, value)
    return family
