"""The gateway's Prometheus metrics: its own request/token counters plus the scheduler's stats.

The vLLM-shaped set (ferry_X for vllm:X, labelled model_name) comes from two collectors registered here:
services.gateway.metrics_requests (this gateway's requests) and services.gateway.metrics_engine (engine-wide,
from EngineStats). The unlabelled ferry_* series below are the older set, kept for existing scrapers.
"""
from __future__ import annotations

import dataclasses

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from services.gateway.metrics_engine import EngineCollector, MergedEngineSeries
from services.gateway.metrics_requests import RequestMetrics
from shared.messages import EngineStats

# SchedulerCounters fields we publish under stable, documented names. (Preemptions are the counter
# ferry_num_preemptions_total only: a gauge of the same family name would clash with it in the exposition.)
_ENGINE_GAUGES = {
    "num_free_blocks": ("ferry_kv_blocks_free", "Free KV cache blocks"),
    "num_total_blocks": ("ferry_kv_blocks_capacity", "KV cache blocks in all"),
    "prefix_queried_tokens": ("ferry_prefix_cache_queried_tokens", "Prompt tokens looked up in the prefix cache"),
    "prefix_hit_tokens": ("ferry_prefix_cache_hit_tokens", "Prompt tokens found in the prefix cache"),
}


class Metrics:
    def __init__(self, gateway_id: int, model: str = "ferry", max_model_len: int = 0, peer_timeout: float = 5.0):
        r = self.registry = CollectorRegistry()
        self.request_series = RequestMetrics(max_model_len)
        self.engine_series = EngineCollector(gateway_id, model, peer_timeout)
        r.register(self.request_series)
        r.register(self.engine_series)
        self.requests = Counter("ferry_requests", "HTTP generation requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("ferry_request_latency_seconds", "Time to the last output",
                                 buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=r)
        self.in_flight = Gauge("ferry_gateway_requests_in_flight", "Requests this gateway is answering", registry=r)
        self.ready = Gauge("ferry_engine_ready", "1 when the whole pipeline is up", ["model_name"],
                           registry=r).labels(model)
        self.engine = {key: Gauge(name, doc, registry=r) for key, (name, doc) in _ENGINE_GAUGES.items()}
        self.kv_used = Gauge("ferry_kv_blocks_used", "KV cache blocks in use", registry=r)
        self.engine_stat = Gauge("ferry_scheduler_stat", "Every numeric Scheduler.stats() value", ["name"], registry=r)
        self.tokenizer_handled = Gauge("ferry_tokenizer_requests_handled", "Requests each tokenizer worker has handled",
                                       ["tokenizer"], registry=r)
        self.gateway_info = Gauge("ferry_gateway_info", "This gateway's id", ["gateway_id"], registry=r)
        self.gateway_info.labels(str(gateway_id)).set(1)

    def export_engine_series_of(self, others: list["Metrics"]) -> None:
        """Several models: this registry exposes every model's engine series (the others' stay updated by their
        own EngineClients); the older unlabelled series stay the first model's."""
        self.registry.unregister(self.engine_series)
        self.registry.register(MergedEngineSeries([self.engine_series, *(m.engine_series for m in others)]))

    def update_engine(self, stats: EngineStats):
        self.ready.set(1 if stats.ready else 0)
        self.engine_series.update(stats)
        counters = {"max_model_len": stats.max_model_len, "num_active_requests": stats.num_active_requests,
                    "steps_in_flight": stats.steps_in_flight}
        engine = stats.engine
        if engine is not None:  # no engine running: its gauges keep their last values
            counters.update({f.name: getattr(engine, f.name) for f in dataclasses.fields(engine)})
            self.kv_used.set(engine.num_total_blocks - engine.num_free_blocks)
        for name, value in counters.items():
            self.engine_stat.labels(name).set(value)
            if name in self.engine:
                self.engine[name].set(value)
        for w in stats.tokenizers:
            self.tokenizer_handled.labels(str(w.id)).set(w.requests_handled)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
