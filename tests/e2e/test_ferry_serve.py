"""`ferry serve` end to end: the real processes, the official openai client."""
from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time

import msgpack
import openai
import pytest
import zmq
from _checks import OpenAIClientChecks, client, kill_mid_stream
from _pipeline import MODEL, Server, alive, child_pids, ferry_command, free_port, get, metric, post


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    port = free_port()
    run_dir = str(tmp / "run")
    argv = ferry_command() + ["serve", "--port", str(port), "--num-tokenizers", "2", "--run-dir", run_dir,
                              "--peer-timeout", "3", "--max-num-seqs", "16"]
    s = Server(argv, port, str(tmp / "ferry.log"))
    s.run_dir = run_dir
    try:
        yield s.wait_ready()
    finally:
        s.stop()


class TestOpenAIClient(OpenAIClientChecks):
    pass


def test_models_version_metrics(server):
    assert json.loads(get(server.url + "/v1/models")[1])["data"][0]["id"] == MODEL
    assert client(server).models.list().data[0].id == MODEL
    assert get(server.url + "/version")[0] == 200
    status, text = get(server.url + "/metrics")
    assert status == 200
    for name in ("ferry_requests_total", "ferry_generation_tokens_total", "ferry_num_requests_running",
                 "ferry_num_requests_waiting", "ferry_kv_blocks_used", "ferry_kv_blocks_free",
                 "ferry_prefix_cache_hit_tokens"):
        assert name in text
    assert metric(text, "ferry_generation_tokens_total") > 0


def test_both_tokenizer_workers_got_work(server):
    for i in range(4):  # round-robin: any four requests reach both workers
        post(server.url + "/v1/completions", {"prompt": f"Count {i}", "max_tokens": 1})
    time.sleep(1.0)  # the workers' load travels in heartbeats
    text = get(server.url + "/metrics")[1]
    handled = [metric(text, "ferry_tokenizer_requests_handled", f'tokenizer="{i}"') for i in (0, 1)]
    print("requests handled per tokenizer worker:", handled)
    assert all(h and h > 0 for h in handled), handled


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None),
    ({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 400, "temperature"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, 400, "max_tokens"),
    ({"model": MODEL, "messages": []}, 400, "messages"),
    (b"[" * 5_000_000, 413, None),
])
def test_bad_requests_get_openai_errors(server, body, status, param):
    got, err = post(server.url + "/v1/chat/completions", body)
    assert got == status
    assert set(err["error"]) == {"message", "type", "param", "code"}
    if param:
        assert err["error"]["param"] == param
    assert get(server.url + "/health")[0] == 200  # still serving


def test_bad_requests_through_the_sdk(server):
    c = client(server)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="gpt-unknown", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=-1,
                                  stream=True)
    assert c.completions.create(model=MODEL, prompt="Hi", max_tokens=2).choices[0].text is not None


def _stats(server):
    text = get(server.url + "/metrics")[1]
    return metric(text, "ferry_num_requests_running"), metric(text, "ferry_kv_blocks_used")


def test_client_disconnect_frees_kv_blocks(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    body = json.dumps({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": True,
                       "stream": True})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    for _ in range(5):
        resp.fp.readline()
    deadline = time.monotonic() + 10
    while _stats(server) != (1.0, _stats(server)[1]) or not _stats(server)[1]:
        assert time.monotonic() < deadline, "the request never showed up in the stats"
        time.sleep(0.05)
    conn.sock.shutdown(2)
    conn.close()
    closed = time.monotonic()
    while _stats(server) != (0.0, 0.0):
        assert time.monotonic() - closed < 1.0, f"blocks still held: {_stats(server)}"
        time.sleep(0.02)
    print(f"KV blocks freed {time.monotonic() - closed:.2f}s after the disconnect")


def test_garbage_frames_are_dropped(server):
    pids = child_pids(server.logs())
    ctx = zmq.Context()
    names = ["scheduler", "runner_out", "detokenizer", "tokenizer.0", "tokenizer.1", "gateway.0", "runner.0"]
    for name in names:
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, 1000)
        s.connect(f"ipc://{server.run_dir}/{name}")
        s.send(os.urandom(100))
        s.send(msgpack.packb({"shape": ["wrong"]}))
        s.send(msgpack.packb([21, "a plan", "of the wrong shape"]))
        s.send(msgpack.packb([41, "req", 0, b"\x01", [1, 2, 3]]))
        s.close()
    ctx.term()
    time.sleep(1.5)
    assert all(alive(pid) for pid in pids.values()), pids
    assert server.logs().count("dropped a malformed frame") >= 3 * len(names)
    assert get(server.url + "/health")[0] == 200
    assert client(server).completions.create(model=MODEL, prompt="Hi", max_tokens=3).choices[0].text is not None


def test_a_dead_tokenizer_worker_fails_only_the_requests_it_held(server):
    """Worker 1 stopped, four requests sent (two reach each worker), then worker 1 killed with its two still
    queued: those two end in a 503 within the peer timeout instead of hanging; worker 0's two complete, and the
    server stays healthy on one worker. (Next to last: it leaves one tokenizer worker.)"""
    pid = child_pids(server.logs())["tokenizer.1"]
    os.kill(pid, signal.SIGSTOP)
    results = [None] * 4

    def one(i):
        results[i] = post(server.url + "/v1/completions", {"model": MODEL, "prompt": f"Count {i}", "max_tokens": 2},
                          timeout=30)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # all four handed out
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert time.monotonic() - killed_at < 10
    assert sorted(status for status, _ in results) == [200, 200, 503, 503], results
    failed = [body for status, body in results if status == 503]
    assert all("tokenizer worker" in body["error"]["message"] for body in failed), failed
    assert get(server.url + "/health")[0] == 200
    assert client(server).completions.create(model=MODEL, prompt="Hi", max_tokens=3).choices[0].text is not None


def test_killing_the_runner_ends_streams_and_health(server):
    """Last in this module: it leaves the server without a runner."""
    killed_at = kill_mid_stream(server, child_pids(server.logs())["runner.0"])
    while get(server.url + "/health")[0] != 503:
        assert time.monotonic() - killed_at < 10
        time.sleep(0.1)
    status, err = post(server.url + "/v1/completions", {"model": MODEL, "prompt": "Hi"})
    assert status == 503 and err["error"]["type"] == "service_unavailable"
