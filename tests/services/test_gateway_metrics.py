"""The gateway's Prometheus gauges follow the scheduler's typed stats (services/gateway/metrics.py)."""
from services.gateway.metrics import Metrics
from shared.messages import EngineStats, SchedulerCounters, WorkerStatus


def gauge(metrics: Metrics, line_start: str) -> float:
    for line in metrics.exposition().decode().splitlines():
        if line.startswith(line_start + " ") or ("{" not in line_start and line.startswith(line_start + "{")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not exposed")


def test_engine_and_worker_gauges():
    m = Metrics(gateway_id=0)
    counters = SchedulerCounters(num_running=2, num_waiting=5, num_free_blocks=30, num_total_blocks=100,
                                 prefix_hit_tokens=48)
    m.update_engine(EngineStats(True, "", counters, [WorkerStatus(0, 11, requests_handled=9), WorkerStatus(1, 12)],
                                1.0, max_model_len=2048, num_active_requests=3, steps_in_flight=2))
    assert gauge(m, "ferry_engine_ready") == 1
    assert gauge(m, "ferry_num_requests_running") == 2 and gauge(m, "ferry_num_requests_waiting") == 5
    assert gauge(m, "ferry_kv_blocks_used") == 70 and gauge(m, "ferry_prefix_cache_hit_tokens") == 48
    assert gauge(m, 'ferry_scheduler_stat{name="steps_in_flight"}') == 2
    assert gauge(m, 'ferry_scheduler_stat{name="num_active_requests"}') == 3
    assert gauge(m, 'ferry_tokenizer_requests_handled{tokenizer="0"}') == 9
    # the engine goes down: not ready, the service's own numbers still move, the engine's keep their last values
    m.update_engine(EngineStats(False, "runner failed", None, [], 2.0, max_model_len=2048))
    assert gauge(m, "ferry_engine_ready") == 0 and gauge(m, 'ferry_scheduler_stat{name="steps_in_flight"}') == 0
    assert gauge(m, "ferry_kv_blocks_used") == 70
