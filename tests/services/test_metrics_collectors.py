"""The pieces behind /metrics (issue 16), without processes: histograms, the engine's phase times, the
scheduler's process book, the runner meter, and the gateway collectors' exposition."""
import subprocess
import sys

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.gateway.metrics_engine import EngineCollector, MergedEngineSeries
from services.gateway.metrics_requests import RequestMetrics, RequestObserver
from services.gateway.responses import Collector
from services.runner.runner_status import RunnerMeter
from services.scheduler.process_health import ProcessBook
from shared.buckets import BucketHistogram, buckets_1_2_5, step_token_buckets
from shared.messages import (
    BucketCounts,
    ChoiceDelta,
    EngineStats,
    Heartbeat,
    ProcessHealth,
    RequestError,
    RequestOutput,
    RunnerReady,
    RunnerStatus,
    SchedulerCounters,
    WorkerStatus,
)
from tests.engine.test_scheduler import make, params, step
from tests.services.test_scheduler_service import bring_up
from tests.services.test_scheduler_service import make as make_service


def samples(*collectors) -> dict:
    registry = CollectorRegistry()
    for c in collectors:
        registry.register(c)
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_histogram_buckets_follow_prometheus_le():
    h = BucketHistogram((0.1, 1.0))
    h.observe(0.1)  # le: a value on a bound counts in that bucket
    h.observe_many([0.5, 2.0, 3.0])
    assert h.counts == [1, 1, 2] and h.count == 4 and h.total == 5.6
    assert h.cumulative() == [("0.1", 1), ("1.0", 2), ("+Inf", 4)]
    assert buckets_1_2_5(120) == (1, 2, 5, 10, 20, 50, 100)
    assert step_token_buckets(100) == (1, 8, 16, 32, 64, 100)


def test_engine_phase_times_are_observed_once_per_sequence_and_steps_once_per_step():
    sched = make(max_inflight=1)
    for i in range(3):
        sched.add_request(f"r{i}", 0, [5, 6, 7], params(max_tokens=4))
    steps = 0
    while sched.requests:
        step(sched)
        steps += 1
    t = sched.timings
    assert [h.count for h in (t.queue, t.prefill, t.decode, t.inference)] == [3, 3, 3, 3]
    assert t.step_tokens.count == steps and t.step_tokens.total == 3 * 3 + 3 * 3  # 3 prompts of 3, then 3 x 3
    assert not sched.prefilling
    sched.add_request("gone", 0, [5, 6], params())
    sched.abort_request("gone")  # never scheduled: no phase times
    assert t.queue.count == 3
    names = [h.name for h in t.snapshot()]
    assert "request_queue_time_seconds" in names and "iteration_tokens" in names


def test_process_book_lists_expected_processes_counts_restarts_and_sees_deaths():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    book = ProcessBook(peer_timeout=5.0, same_host=True, expected=[("tokenizer", 0), ("runner", 0)])
    down = {(h.service, h.id): h for h in book.snapshot(now=1.0)}
    assert not down["tokenizer", 0].up and down["tokenizer", 0].seconds_since_heartbeat == -1
    live_pid = subprocess.os.getpid()
    book.heard("tokenizer", 0, live_pid, now=1.0)
    book.heard("runner", 0, live_pid, now=1.0, identity="instance-a")
    book.heard("runner", 0, live_pid, now=2.0, identity="instance-b")  # a restarted runner
    book.heard("gateway", 3, dead.pid, now=2.0)
    health = {(h.service, h.id): h for h in book.snapshot(now=3.0)}
    assert health["tokenizer", 0].up and health["tokenizer", 0].seconds_since_heartbeat == 2.0
    assert health["runner", 0].restarts == 1 and health["tokenizer", 0].restarts == 0
    assert not health["gateway", 3].up  # beat recently, but its pid is gone: down at once
    assert not {(h.service, h.id): h for h in book.snapshot(now=7.0)}["tokenizer", 0].up  # silent too long


def test_runner_meter_reports_idle_share_per_interval_on_the_cpu():
    class CpuRunner:
        device = None

    meter = RunnerMeter(1, CpuRunner(), now=0.0)
    meter.step_done(0.25)
    status = meter.status(now=1.0)
    assert (status.rank, status.device, status.steps, status.gpu_memory_total_bytes) == (1, "cpu", 1, 0)
    assert status.idle_share == 0.75
    assert meter.status(now=2.0).idle_share == 1.0  # no step in the last interval


def test_only_the_reporting_gateway_exports_engine_wide_series():
    hist = BucketCounts("request_queue_time_seconds", [0.5, 1.0], [1, 0, 1], 2.2)
    stats = EngineStats(True, "", SchedulerCounters(num_running=2, num_waiting=1, num_free_blocks=75,
                                                    num_total_blocks=100, prefix_queried_tokens=10,
                                                    prefix_hit_tokens=4, num_preemptions=3), [], 1.0,
                        histograms=[hist], processes=[ProcessHealth("tokenizer", 1, 42, False, 9.0, 2)],
                        runners=[RunnerStatus(0, "cpu", 5, 1.5, 0.5)], reporter_gateway=0, scheduler_pid=7)
    mine, other = EngineCollector(0, "m"), EngineCollector(1, "m")
    for c in (mine, other):
        c.update(stats)
    assert samples(other) == {}
    s = samples(mine)
    m = (("model_name", "m"),)
    assert s[("ferry_num_requests_running", m)] == 2 and s[("ferry_kv_cache_usage_perc", m)] == 0.25
    assert s[("ferry_prefix_cache_hits_total", m)] == 4 and s[("ferry_num_preemptions_total", m)] == 3
    assert s[("ferry_request_queue_time_seconds_bucket", (("le", "1.0"),) + m)] == 1
    assert s[("ferry_request_queue_time_seconds_count", m)] == 2
    tok = (("id", "1"), ("model_name", "m"), ("service", "tokenizer"))
    assert s[("ferry_process_up", tok)] == 0 and s[("ferry_process_restarts_total", tok)] == 2
    assert s[("ferry_process_up", (("id", "0"), ("model_name", "m"), ("service", "scheduler")))] == 1
    rank = (("device", "cpu"), ("model_name", "m"), ("rank", "0"))
    assert s[("ferry_runner_gpu_idle_share", rank)] == 0.5 and s[("ferry_runner_steps_total", rank)] == 5
    # stats right after a request ends carry counters only: the last histograms and health stay
    mine.update(EngineStats(True, "", SchedulerCounters(num_running=1, num_total_blocks=100, num_free_blocks=100),
                            [], 1.1))
    s = samples(mine)
    assert s[("ferry_num_requests_running", m)] == 1 and s[("ferry_request_queue_time_seconds_count", m)] == 2
    assert samples(other) == {}
    stats.scheduler_pid = 8  # a restarted scheduler
    mine.update(stats)
    assert samples(mine)[("ferry_process_restarts_total", (("id", "0"), ("model_name", "m"),
                                                            ("service", "scheduler")))] == 1


def test_request_observer_counts_per_prompt_and_per_output():
    metrics = RequestMetrics(max_model_len=1000)
    collector = Collector(num_choices=2, num_prompts=2)  # two prompts, n=1
    obs = RequestObserver(metrics.series("m"), num_prompts=2, n=1, max_tokens=3)
    for k in range(1, 4):
        for prompt in (0, 1):
            out = RequestOutput("r", 0, [ChoiceDelta(0, "x", "length" if k == 3 else None, k)], prompt_tokens=5)
            obs.output(prompt, out)
            collector.add(prompt, prompt, out.choices[0], 5, 0)
    obs.finish(collector)
    obs.finish(collector)  # once only
    s = samples(metrics)
    m = (("model_name", "m"),)
    assert s[("ferry_time_to_first_token_seconds_count", m)] == 2
    assert s[("ferry_inter_token_latency_seconds_count", m)] == 4
    assert s[("ferry_generation_tokens_total", m)] == 6 and s[("ferry_prompt_tokens_total", m)] == 10
    assert s[("ferry_request_success_total", (("finished_reason", "length"),) + m)] == 2
    assert s[("ferry_e2e_request_latency_seconds_count", m)] == 2
    assert obs.summary["generated_tokens"] == 6 and obs.summary["finish_reason"] == "length"
    failed = RequestObserver(metrics.series("m"), 1, 1, None)
    failed.output(0, RequestError("r2", 0, 400, "bad", "invalid_request_error"))
    failed.finish(Collector(1, 1))
    assert samples(metrics)[("ferry_time_to_first_token_seconds_count", m)] == 2  # an error is no first token


def test_the_scheduler_publishes_health_runner_status_and_names_the_lowest_live_gateway():
    svc, out = make_service()
    bring_up(svc, out)
    pid = subprocess.os.getpid()
    for gid in (2, 1):
        svc.on_message(Heartbeat("gateway", WorkerStatus(gid, pid)), 0.2)
    svc.on_message(RunnerReady(0, pid, 64, "inst-a", svc.session, RunnerStatus(0, "cpu", 9, 0.5, 0.25)), 0.2)
    svc.tick(1.5)
    stats = out.stats[-1]
    assert stats.reporter_gateway == 1 and stats.scheduler_pid == pid
    assert stats.runners == [RunnerStatus(0, "cpu", 9, 0.5, 0.25)]
    health = {(h.service, h.id): h for h in stats.processes}
    assert {("gateway", 1), ("gateway", 2), ("tokenizer", 0), ("detokenizer", 0), ("runner", 0)} <= set(health)
    assert health["runner", 0].up and health["gateway", 1].up
    assert {h.name for h in stats.histograms} >= {"request_queue_time_seconds", "iteration_tokens"}


def test_several_models_engine_series_are_one_family_each_with_every_model():
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    def fed(model: str, running: int) -> EngineCollector:
        c = EngineCollector(0, model)
        c.update(EngineStats(True, "", SchedulerCounters(num_running=running, num_total_blocks=10,
                                                         num_free_blocks=10), [], 1.0,
                             runners=[RunnerStatus(0, "cpu", 1, 0.1, 0.0)], reporter_gateway=0, scheduler_pid=7))
        return c

    registry = CollectorRegistry()
    registry.register(MergedEngineSeries([fed("a", 1), fed("b", 2)]))
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    names = [f.name for f in families]
    assert len(names) == len(set(names))  # each family once
    running = next(f for f in families if f.name == "ferry_num_requests_running")
    assert {s.labels["model_name"]: s.value for s in running.samples} == {"a": 1, "b": 2}
    up = next(f for f in families if f.name == "ferry_process_up")
    assert {(s.labels["model_name"], s.labels["service"]) for s in up.samples} == {("a", "scheduler"),
                                                                                  ("b", "scheduler")}
