"""Metrics, dashboard, alerts and request logs against a live ferry (default model) and a real Prometheus.

One ferry (two tokenizer workers, JSON logs at DEBUG) and one Prometheus scraping it every second with a test
copy of deploy/prometheus/alerts.yml (every `for:` cut to 1 s) serve the whole module; the last test kills a
tokenizer worker.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse

import pytest
from _pipeline import MODEL, REPO, Server, child_pids, ferry_command, free_port, get
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = os.path.join(REPO, "deploy")
ALERTS = os.path.join(DEPLOY, "prometheus", "alerts.yml")
DASHBOARD = os.path.join(DEPLOY, "grafana", "ferry-dashboard.json")
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
_THRESHOLD = re.compile(r"^(?P<lhs>.*\S)\s*(==|!=|>=|<=|>|<)\s*-?[0-9.]+$", re.S)


class Prometheus:
    def __init__(self, tmp, target_port: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with open(ALERTS) as fh:  # fire as soon as the condition holds: the test cannot wait minutes
            rules = re.sub(r"for: \S+", "for: 1s", fh.read())
        (tmp / "alerts.yml").write_text(rules)
        (tmp / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\nrule_files: [alerts.yml]\n"
            f"scrape_configs:\n  - job_name: ferry\n    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n")
        self.log = open(tmp / "prometheus.log", "wb")
        self.proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
                                      f"--storage.tsdb.path={tmp / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def api(self, path: str, **params) -> dict:
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        status, body = get(f"{self.url}/api/v1/{path}{query}", timeout=10)
        assert status == 200, (path, params, body)
        return json.loads(body)["data"]

    def query(self, expr: str) -> list:
        return self.api("query", query=expr)["result"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    port = free_port()
    server = Server(ferry_command() + ["serve", "--port", str(port), "--run-dir", str(tmp / "run"),
                                       "--num-tokenizers", "2", "--log-format", "json", "--log-level", "DEBUG"],
                    port, str(tmp / "ferry.log"))
    prom = Prometheus(tmp, port)
    try:
        server.wait_ready()
        yield server, prom
    finally:
        prom.stop()
        server.stop()


def client(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=120, max_retries=0)


def scrape(server) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels without model_name) -> value, from one /metrics."""
    status, text = get(server.url + "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = dict(s.labels)
            if labels.pop("model_name", MODEL) == MODEL:
                out[(s.name, tuple(sorted(labels.items())))] = s.value
    return out


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def complete(server, max_tokens: int, stream: bool, **extra):
    c = client(server)
    body = dict(model=MODEL, prompt="Count: one two three", max_tokens=max_tokens, temperature=0.0,
                extra_body={"ignore_eos": True}, **extra)
    if not stream:
        return c.completions.create(**body).usage.completion_tokens
    tokens = 0
    for chunk in c.completions.create(stream=True, stream_options={"include_usage": True}, **body):
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return tokens


def test_exact_counts_after_n_requests_of_m_tokens(stack):
    server, _ = stack
    n, m = 4, 6
    before = scrape(server)
    done = []
    threads = [threading.Thread(target=lambda s=(i % 2 == 1): done.append(complete(server, m, s))) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert done == [m] * n

    def delta(samples, name, **labels):
        return value(samples, name, **labels) - value(before, name, **labels)

    deadline = time.monotonic() + 5  # the engine's histograms come with the scheduler's next stats
    while True:
        after = scrape(server)
        if delta(after, "ferry_request_queue_time_seconds_count") >= n or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert delta(after, "ferry_time_to_first_token_seconds_count") == n
    assert delta(after, "ferry_inter_token_latency_seconds_count") == n * (m - 1)
    assert delta(after, "ferry_generation_tokens_total") == n * m
    assert delta(after, "ferry_request_success_total", finished_reason="length") == n
    for name in ("ferry_e2e_request_latency_seconds", "ferry_request_time_per_output_token_seconds",
                 "ferry_request_generation_tokens", "ferry_request_params_max_tokens", "ferry_request_params_n",
                 "ferry_request_queue_time_seconds", "ferry_request_prefill_time_seconds",
                 "ferry_request_decode_time_seconds", "ferry_request_inference_time_seconds"):
        assert delta(after, name + "_count") == n, name
    assert delta(after, "ferry_request_generation_tokens_sum") == n * m
    assert delta(after, "ferry_request_params_max_tokens_sum") == n * m
    assert delta(after, "ferry_http_requests_total", endpoint="/v1/completions", status="200") == n
    assert delta(after, "ferry_iteration_tokens_count") >= m  # at least one step per generated token


def test_request_ids_travel_and_every_finished_request_is_logged(stack):
    server, _ = stack
    raw = client(server).completions.with_raw_response.create(
        model=MODEL, prompt="Hello", max_tokens=3, extra_headers={"X-Request-Id": "trace-7.a:b"})
    assert raw.headers["x-request-id"] == "trace-7.a:b"
    assert raw.parse().usage.completion_tokens == 3
    made = client(server).completions.with_raw_response.create(model=MODEL, prompt="Hi", max_tokens=2)
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    bad = client(server).completions.with_raw_response
    with pytest.raises(Exception) as e:
        bad.create(model=MODEL, prompt="Hi", max_tokens=2, extra_headers={"X-Request-Id": "no spaces"})
    assert getattr(e.value, "status_code", None) == 400 and "X-Request-Id" in str(e.value)

    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
        ours = [r for r in lines if "trace-7.a:b" in r["message"]]
        if any(r["service"].startswith("detokenizer") for r in ours) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    (entry,) = [r for r in ours if r["logger"] == "ferry.requests"]
    assert entry["request_id"] == "trace-7.a:b" and entry["status"] == 200 and entry["model"] == MODEL
    assert entry["endpoint"] == "/v1/completions" and entry["generated_tokens"] == 3 and entry["prompt_tokens"] > 0
    assert entry["finish_reason"] == "length" and 0 < entry["ttft"] <= entry["latency"]
    assert entry["client"] == "127.0.0.1" and entry["engine_id"].startswith("cmpl-trace-7.a:b-")
    # the engine id (which holds the client's id) is in the lines of every process that handled the request
    services = {r["service"].split(".")[0] for r in ours if entry["engine_id"] in r["message"]}
    assert {"tokenizer", "scheduler", "detokenizer"} <= services, services
    made_entry = [r for r in lines if r.get("request_id") == made.headers["x-request-id"]]
    assert len(made_entry) == 1 and made_entry[0]["generated_tokens"] == 2


def test_aborting_everything_in_flight_returns_the_engine_to_idle_within_2s(stack):
    server, _ = stack
    streams = []

    def start(i):
        s = client(server).completions.create(model=MODEL, prompt=f"Story {i}:", max_tokens=1000, stream=True,
                                              extra_body={"ignore_eos": True})
        next(iter(s))  # it runs
        streams.append(s)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(streams) == 4
    deadline = time.monotonic() + 3  # the gauges come with the scheduler's next stats: wait for them
    while True:
        busy = scrape(server)
        in_flight = value(busy, "ferry_num_requests_running") + value(busy, "ferry_num_requests_waiting")
        if in_flight >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert in_flight >= 1
    assert value(busy, "ferry_kv_cache_usage_perc") > 0
    for s in streams:
        s.close()
    closed = time.monotonic()
    while True:
        now = scrape(server)
        idle = (value(now, "ferry_num_requests_running") == 0 and value(now, "ferry_num_requests_waiting") == 0
                and value(now, "ferry_kv_cache_usage_perc") == 0)
        if idle or time.monotonic() - closed > 5:
            break
        time.sleep(0.05)
    assert idle and time.monotonic() - closed < 2.0, now


def test_exposition_parses_and_passes_promtool(stack):
    server, _ = stack
    text = get(server.url + "/metrics")[1]
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"ferry_time_to_first_token_seconds", "ferry_process_up", "ferry_runner_gpu_memory_used_bytes"} <= names
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_deploy_files_pass_promtool():
    for args in (["check", "rules", ALERTS], ["check", "config", os.path.join(DEPLOY, "prometheus", "prometheus.yml")]):
        check = subprocess.run([PROMTOOL, *args], capture_output=True, timeout=30)
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def _dashboard_exprs() -> list[str]:
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                found.append(node["expr"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    with open(DASHBOARD) as fh:
        walk(json.load(fh))
    return [e.replace("$model_name", ".*").replace("$__rate_interval", "1m") for e in found]


def _alert_exprs() -> list[str]:
    exprs = re.findall(r"^\s+expr: (.+)$", open(ALERTS).read(), re.M)
    lhs = [_THRESHOLD.match(e) for e in exprs]
    assert all(lhs), exprs  # every alert is `<series> <comparison> <number>` (alerts.yml says so)
    return [m.group("lhs") for m in lhs]


def test_every_dashboard_and_alert_expression_evaluates_to_data(stack):
    server, prom = stack
    for _ in range(2):  # a little load inside Prometheus' rate windows
        complete(server, 4, stream=True)
    exprs = _dashboard_exprs() + _alert_exprs()
    assert len(exprs) > 30
    deadline = time.monotonic() + 30
    while True:
        empty = [e for e in exprs if not prom.query(e)]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not empty


def test_a_killed_tokenizer_shows_in_its_up_series_and_fires_the_missing_process_alert(stack):
    server, prom = stack
    messages = [json.loads(line)["message"] for line in server.logs().splitlines() if line.startswith("{")]
    pid = child_pids("\n".join(messages))["tokenizer.1"]  # the launcher's "started NAME (pid N)" lines
    key = ("ferry_process_up", (("id", "1"), ("service", "tokenizer")))
    assert scrape(server)[key] == 1
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    while scrape(server)[key] != 0 and time.monotonic() - killed < 10:
        time.sleep(0.1)
    assert time.monotonic() - killed < 5.0  # peer_timeout, the heartbeat timeout
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        firing = [a for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] == "FerryProcessMissing"
                  and a["state"] == "firing"]
        if firing:
            break
        time.sleep(0.5)
    assert [(a["labels"]["service"], a["labels"]["id"]) for a in firing] == [("tokenizer", "1")]
    # the server goes on with the other worker
    assert complete(server, 2, stream=False) == 2
