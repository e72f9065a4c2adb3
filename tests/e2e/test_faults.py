"""Faults against the real processes (issue 13, must-hold 4): a dead tokenizer worker spares the streams past it,
a dead gateway's requests are aborted and their KV blocks freed, SIGTERM to `ferry serve` drains and exits 0.
(SIGKILL to supervisord: tests/e2e/test_supervisord.py.)"""
from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from _pipeline import MODEL, REPO, Server, alive, base_env, child_pids, ferry_command, free_port, get, metric, post

COMMON = ["--num-tokenizers", "1", "--peer-timeout", "3", "--max-num-seqs", "16"]


class Stream(threading.Thread):
    """One streaming completion read line by line: `started` once its first token came (it is past the
    tokenizer), then the text, the usage, and any error event."""

    def __init__(self, port: int, max_tokens: int, prompt: str = "Tell me a story"):
        super().__init__(daemon=True)
        self.port, self.max_tokens, self.prompt = port, max_tokens, prompt
        self.started = threading.Event()
        self.status, self.events, self.done, self.error = 0, [], False, None

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        body = {"model": MODEL, "prompt": self.prompt, "max_tokens": self.max_tokens, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True}}
        try:
            conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            self.status = resp.status
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    self.done = True
                    break
                event = json.loads(line[len("data: "):])
                self.events.append(event)
                if event.get("choices"):
                    self.started.set()
        except Exception as e:  # the connection died: the test reads self.error
            self.error = e
        finally:
            self.started.set()
            conn.close()

    @property
    def completion_tokens(self) -> int:
        usage = [e["usage"] for e in self.events if e.get("usage")]
        return usage[-1]["completion_tokens"] if usage else 0

    @property
    def errors(self) -> list:
        return [e for e in self.events if "error" in e]


def start_streams(port: int, count: int, max_tokens: int) -> list[Stream]:
    streams = [Stream(port, max_tokens, f"Story number {i}:") for i in range(count)]
    for s in streams:
        s.start()
    for s in streams:
        assert s.started.wait(120), "a stream never got its first token"
    assert all(s.error is None and s.status == 200 for s in streams)
    return streams


def assert_complete(streams: list[Stream], max_tokens: int, timeout: float = 120):
    for s in streams:
        s.join(timeout)
    assert not any(s.is_alive() for s in streams), "a stream never ended"
    for s in streams:
        assert s.error is None and not s.errors and s.done, (s.error, s.errors[:1])
        assert s.completion_tokens == max_tokens


def engine_load(url: str) -> tuple[float | None, float | None]:
    text = get(url + "/metrics")[1]
    return metric(text, "ferry_num_requests_running"), metric(text, "ferry_kv_blocks_used")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`ferry serve` with one tokenizer worker, and a second gateway (id 1) started by hand beside it."""
    tmp = tmp_path_factory.mktemp("faults")
    port, port1 = free_port(), free_port()
    run_dir = str(tmp / "run")
    s = Server(ferry_command() + ["serve", "--port", str(port), "--run-dir", run_dir, *COMMON], port,
               str(tmp / "ferry.log"))
    gw1_log = open(tmp / "gateway1.log", "wb")
    gw1 = subprocess.Popen([sys.executable, "-m", "services.gateway", "--gateway-id", "1", "--port", str(port1),
                            "--run-dir", run_dir, *COMMON], cwd=REPO, env=base_env(), stdout=gw1_log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    s.gateway1, s.url1 = gw1, f"http://127.0.0.1:{port1}"
    try:
        s.wait_ready()
        deadline = time.monotonic() + 60
        while get(s.url1 + "/health")[0] != 200:
            assert gw1.poll() is None and time.monotonic() < deadline, "the second gateway never got ready"
            time.sleep(0.2)
        yield s
    finally:
        if gw1.poll() is None:
            gw1.kill()
        gw1.wait()
        gw1_log.close()
        s.stop()


def test_killing_a_gateway_aborts_its_requests_and_frees_their_blocks(server):
    streams = start_streams(int(server.url1.rsplit(":", 1)[1]), 4, 2000)  # through gateway 1
    survivor = Stream(server.port, 100)  # through gateway 0: must not be touched (long enough to be seen)
    survivor.start()
    assert survivor.started.wait(60) and survivor.error is None
    deadline = time.monotonic() + 5
    while engine_load(server.url)[0] != 5.0:  # stats reach the gateways about once a second
        assert time.monotonic() < deadline, engine_load(server.url)
        time.sleep(0.05)
    assert engine_load(server.url)[1] > 0
    os.kill(server.gateway1.pid, signal.SIGKILL)
    killed = time.monotonic()
    while engine_load(server.url)[0] > 1.0:  # the survivor alone, or nothing once it finished
        assert time.monotonic() - killed < 2.0, f"the dead gateway's requests still run: {engine_load(server.url)}"
        time.sleep(0.05)
    print(f"a dead gateway's requests aborted {time.monotonic() - killed:.2f}s after the kill")
    assert_complete([survivor], 100)
    for s in streams:  # their client connections died with the gateway
        s.join(10)
        assert not s.done
    deadline = time.monotonic() + 5
    while engine_load(server.url) != (0.0, 0.0):
        assert time.monotonic() < deadline, engine_load(server.url)
        time.sleep(0.05)
    assert get(server.url + "/health")[0] == 200


def test_killing_the_only_tokenizer_worker_spares_the_streams_past_it(server):
    """Last on this server: it leaves no tokenizer (ferry serve does not restart it)."""
    streams = start_streams(server.port, 8, 48)
    os.kill(child_pids(server.logs())["tokenizer.0"], signal.SIGKILL)
    killed = time.monotonic()
    health = set()
    while any(s.is_alive() for s in streams) and time.monotonic() - killed < 120:
        health.add(get(server.url + "/health")[0])
        time.sleep(0.2)
    took = time.monotonic() - killed
    assert_complete(streams, 48)
    print(f"8 streams finished {took:.1f}s after the kill; /health said {sorted(health)}")
    if took > 3 + 2:  # they outlived the scheduler's notice (peer_timeout): not ready, and not failed for it
        assert 503 in health
    status, err = post(server.url + "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2})
    assert status == 503 and "tokenizer" in err["error"]["message"]


def _scan_children(pids: dict[str, int]) -> list[str]:
    return [name for name, pid in pids.items() if alive(pid)]


def test_sigterm_to_ferry_serve_drains_the_streams_in_flight_and_exits_0(tmp_path):
    port = free_port()
    s = Server(ferry_command() + ["serve", "--port", str(port), "--run-dir", str(tmp_path / "run"), *COMMON,
                                  "--shutdown-timeout", "150"], port, str(tmp_path / "ferry.log"))
    try:
        s.wait_ready()
        pids = child_pids(s.logs())
        streams = start_streams(port, 8, 16)  # short: a 2-core CI machine shared with others runs ~1 step/s
        s.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        while get(s.url + "/health")[0] != 503:  # load balancers move on
            assert time.monotonic() - signalled < 5, "/health still 200 after SIGTERM"
            time.sleep(0.05)
        status, err = post(s.url + "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2}, timeout=10)
        assert status == 503 and "shutting down" in err["error"]["message"]
        assert_complete(streams, 16, timeout=150)
        assert s.proc.wait(60) == 0
        print(f"drained 8 streams and exited {time.monotonic() - signalled:.1f}s after SIGTERM")
        deadline = time.monotonic() + 5
        while _scan_children(pids):
            assert time.monotonic() < deadline, f"left running: {_scan_children(pids)}"
            time.sleep(0.1)
    finally:
        s.stop()
