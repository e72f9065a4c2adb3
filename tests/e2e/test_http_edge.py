"""The HTTP edge against a real `ferry serve`: API keys (path and Host tricks), CORS, slowloris, a flood past
--max-waiting-requests, per-key rate limits, and --request-timeout freeing the KV blocks (issue 13, 3 and 6)."""
from __future__ import annotations

import http.client
import json
import resource
import selectors
import socket
import threading
import time

import pytest
from _pipeline import Server, child_pids, ferry_command, free_port, get, metric

KEYS = ("key-one", "key-two")
FILE_KEY = "key-from-file"
ORIGIN = "https://app.example"
READ_TIMEOUT = 2.0


def raise_fd_limit(need: int):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard == resource.RLIM_INFINITY else min(hard, 65536),
                                                    hard))


def start(tmp, name: str, *flags: str) -> Server:
    port = free_port()
    argv = ferry_command() + ["serve", "--port", str(port), "--run-dir", str(tmp / f"run-{name}"), *flags]
    return Server(argv, port, str(tmp / f"{name}.log"))


def wait_healthy(s: Server) -> Server:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if s.proc.poll() is not None:
            raise RuntimeError(s.logs()[-4000:])
        if get(s.url + "/health")[0] == 200:
            return s
        time.sleep(0.5)
    raise TimeoutError(s.logs()[-4000:])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("edge")
    key_file = tmp / "keys.txt"
    key_file.write_text(f"# the operator's keys\n{FILE_KEY}\n\n")
    s = start(tmp, "edge", "--api-key", ",".join(KEYS), "--api-key-file", str(key_file),
              "--allowed-origins", f"{ORIGIN}, https://other.example", "--http-read-timeout", str(READ_TIMEOUT),
              "--max-connections", "4096", "--max-waiting-requests", "200")
    try:
        yield wait_healthy(s)
    finally:
        s.stop()


def raw(server, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    """One request exactly as written (no path clean-up): (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


COMPLETION = json.dumps({"prompt": "Hello", "max_tokens": 1}).encode()
CHAT = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}).encode()
ROUTES = [("GET", "/v1/models", None), ("POST", "/v1/completions", COMPLETION), ("POST", "/v1/chat/completions", CHAT),
          ("GET", "/version", None), ("GET", "/no/such/route", None), ("DELETE", "/v1/models", None),
          ("OPTIONS", "/v1/models", None),
          # issue 14's routes
          ("GET", "/v1/models/SmolLM2-135M-Instruct", None), ("POST", "/tokenize", b'{"prompt": "hi"}'),
          ("POST", "/detokenize", b'{"tokens": [1]}'), ("GET", "/tokenizer_info", None), ("GET", "/openapi.json", None)]
TRICKS = ["//v1/models", "/v1/models/", "/V1/models", "/v1/../v1/models", "/%761/models", "/v1/%6dodels",
          "/./v1/models", "/health/../v1/models", "/health/%2e%2e/v1/models", "/health%2f..%2fv1/models",
          "/metrics/../v1/models", "/health/", "/Health", "/HEALTH", "/health;x", "/%68ealth",
          "http://127.0.0.1/health/../v1/models", "/v1/models#/health", "/v1/models?/health"]
HOSTS = ["localhost/health", "127.0.0.1/health", "x/../health", "localhost:1/metrics", ""]


@pytest.mark.parametrize("method,path,body", ROUTES)
def test_every_route_needs_a_key(server, method, path, body):
    for headers in ({}, bearer("wrong"), bearer(KEYS[0] + "x"), {"Authorization": KEYS[0]},
                    {"Authorization": f"Basic {KEYS[0]}"}, {"x-api-key": KEYS[0]}, bearer("")):
        status, h, data = raw(server, method, path, headers, body)
        assert status == 401, (method, path, headers, status)
        assert h.get("WWW-Authenticate") == "Bearer"
        err = json.loads(data)["error"]
        assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error"
    if path != "/no/such/route" and method in ("GET", "POST"):
        for key in (*KEYS, FILE_KEY):
            assert raw(server, method, path, bearer(key), body)[0] == 200


@pytest.mark.parametrize("path", TRICKS)
def test_path_tricks_need_a_key(server, path):
    for method in ("GET", "POST", "HEAD"):
        assert raw(server, method, path, {}, COMPLETION if method == "POST" else None)[0] == 401, (method, path)


@pytest.mark.parametrize("host", HOSTS)
def test_host_tricks_need_a_key(server, host):
    for path in ("/v1/models", "//v1/models", "/health/../v1/models"):
        assert raw(server, "GET", path, {"Host": host})[0] == 401, (host, path)


def test_health_and_metrics_stay_open(server):
    for path in ("/health", "/metrics"):
        assert raw(server, "GET", path)[0] == 200
        assert raw(server, "GET", path, bearer("wrong"))[0] == 200  # open routes ignore keys
    assert raw(server, "HEAD", "/health")[0] == 200
    assert raw(server, "POST", "/health", {}, b"{}")[0] == 401  # only the open route itself is open


def test_size_limits(server):
    status, _, _ = raw(server, "GET", "/v1/models", {"X-Big": "a" * 10_000, **bearer(KEYS[0])})
    assert status in (400, 431)  # a header line over --max-header-bytes
    assert raw(server, "GET", "/v" + "1" * 10_000, bearer(KEYS[0]))[0] in (400, 414)
    status, _, data = raw(server, "POST", "/v1/completions", bearer(KEYS[0]), b"[" * (4 * 1024 * 1024 + 1))
    assert status == 413 and json.loads(data)["error"]["code"] == "body_too_large"
    assert get(server.url + "/health")[0] == 200


def test_cors(server):
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    status, h, _ = raw(server, "OPTIONS", "/v1/chat/completions", preflight)
    assert status == 204
    assert h["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in h["Access-Control-Allow-Methods"]
    allowed = {x.strip().lower() for x in h["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    # another origin's preflight is not answered, and gets no CORS headers
    status, h, _ = raw(server, "OPTIONS", "/v1/chat/completions", {**preflight, "Origin": "https://evil.example"})
    assert status == 401 and "Access-Control-Allow-Origin" not in h
    status, h, _ = raw(server, "POST", "/v1/completions", {"Origin": ORIGIN, **bearer(KEYS[0])}, COMPLETION)
    assert status == 200 and h["Access-Control-Allow-Origin"] == ORIGIN
    status, h, _ = raw(server, "POST", "/v1/completions", {"Origin": ORIGIN}, COMPLETION)
    assert status == 401 and h["Access-Control-Allow-Origin"] == ORIGIN  # the browser may read the error
    status, h, _ = raw(server, "POST", "/v1/completions", {"Origin": "https://evil.example", **bearer(KEYS[0])},
                       COMPLETION)
    assert status == 200 and "Access-Control-Allow-Origin" not in h


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        sock.setblocking(False)
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def test_slowloris_is_dropped_and_a_normal_client_is_served(server):
    raise_fd_limit(6000)
    stop, results = threading.Event(), []

    def normal_client():
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                status = raw(server, "POST", "/v1/completions", bearer(KEYS[1]), COMPLETION)[0]
            except OSError as e:
                status = repr(e)
            results.append((status, time.monotonic() - t0))
            stop.wait(0.5)

    stalls = [b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n",  # a head that never ends
              b"GET /v1/mod",  # a request line that never ends
              b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEYS[0].encode()
              + b"\r\nContent-Length: 1000\r\n\r\n{\"prompt\": "]  # a body that never ends
    socks = []
    thread = threading.Thread(target=normal_client, daemon=True)
    thread.start()
    try:
        opened = time.monotonic()
        for i in range(2000):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(stalls[i % len(stalls)])
            socks.append(s)
        print(f"2000 stalled connections opened in {time.monotonic() - opened:.1f}s")
        deadline = time.monotonic() + READ_TIMEOUT * 2 + 5
        open_ones = socks
        while open_ones and time.monotonic() < deadline:
            time.sleep(0.5)
            open_ones = [s for s in open_ones if not _closed_by_peer(s)]
        assert not open_ones, f"{len(open_ones)} stalled connections still open after {READ_TIMEOUT}s timeouts"
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(30)
        for s in socks:
            s.close()
    print(f"normal client: {len(results)} requests, slowest {max(t for _, t in results):.2f}s")
    assert len(results) >= 5
    assert all(status == 200 for status, _ in results), results


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


class Flood:
    """n requests, each sent whole the moment its connection opens (a slow client must not look like slowloris),
    their answers read as they come: (status, Retry-After, seconds from sending to the end of the answer)."""

    def __init__(self, port: int, n: int, key: str):
        self.port, self.n, self.key = port, n, key
        self.sel = selectors.DefaultSelector()
        self.results: list[tuple[object, str | None, float]] = []

    def run(self, timeout: float = 180) -> list:
        for i in range(self.n):
            body = json.dumps({"prompt": f"Count to {i % 50}", "max_tokens": 4}).encode()
            head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {self.key}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            s.sendall(head.encode() + body)
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, (time.monotonic(), bytearray()))
            if i % 50 == 0:
                self.reap(0)
        deadline = time.monotonic() + timeout
        while self.sel.get_map() and time.monotonic() < deadline:
            self.reap(0.5)
        for key in list(self.sel.get_map().values()):  # hung: counted as such
            self.results.append(("hung", None, timeout))
            self.sel.unregister(key.fileobj)
            key.fileobj.close()
        return self.results

    def reap(self, timeout: float):
        for key, _ in self.sel.select(timeout):
            sent, buf = key.data
            try:
                data = key.fileobj.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data, buf[:] = b"", b"reset"
            if data:
                buf += data
                continue
            self.sel.unregister(key.fileobj)
            key.fileobj.close()
            head = bytes(buf).split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
            parts = head[0].split(" ")
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else head[0]
            retry = next((h.split(":", 1)[1].strip() for h in head[1:] if h.lower().startswith("retry-after:")), None)
            self.results.append((status, retry, time.monotonic() - sent))


def test_flood_past_max_waiting_gets_503_at_once(server):
    raise_fd_limit(6000)
    gateway = child_pids(server.logs())["gateway"]
    rss_before = _rss_kb(gateway)
    stop, health_seen = threading.Event(), []

    def watch_health():
        while not stop.is_set():
            health_seen.append(get(server.url + "/health", timeout=10))
            stop.wait(0.1)

    watcher = threading.Thread(target=watch_health, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    try:
        results = Flood(server.port, 2000, KEYS[0]).run()
    finally:
        stop.set()
        watcher.join(30)
    took = time.monotonic() - t0
    statuses: dict = {}
    for status, _, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    rejected = sorted(t for status, _, t in results if status == 503)
    slowest = max(t for _, _, t in results)
    print(f"2000 requests in {took:.1f}s: {statuses}; median 503 {rejected[len(rejected) // 2]:.2f}s; "
          f"slowest {slowest:.2f}s")
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.get(200, 0) >= 200 and statuses.get(503, 0) >= 200
    assert all(ra is not None and int(ra) >= 1 for status, ra, _ in results if status == 503)
    assert rejected[len(rejected) // 2] < slowest / 2  # a 503 does not wait for the engine
    assert any(status == 503 and "overloaded" in text for status, text in health_seen), health_seen[-5:]
    grown_mb = (_rss_kb(gateway) - rss_before) / 1024
    print(f"gateway RSS grew {grown_mb:.0f} MB")
    assert grown_mb < 300
    assert get(server.url + "/health")[0] == 200  # the queue drained


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limited")
    s = start(tmp, "limited", "--api-key", "a,b", "--rate-limit-rpm", "3", "--request-timeout", "1.5")
    try:
        yield wait_healthy(s)
    finally:
        s.stop()


def test_rate_limit_per_key(limited):
    for _ in range(3):
        assert raw(limited, "POST", "/v1/completions", bearer("a"), COMPLETION)[0] == 200
    status, h, data = raw(limited, "POST", "/v1/completions", bearer("a"), COMPLETION)
    assert status == 429 and int(h["Retry-After"]) >= 1
    assert json.loads(data)["error"]["code"] == "rate_limit_exceeded"
    assert raw(limited, "POST", "/v1/completions", bearer("b"), COMPLETION)[0] == 200  # the other key's own budget


def _kv_idle(server) -> bool:
    text = get(server.url + "/metrics")[1]
    return metric(text, "ferry_kv_blocks_used") == 0 and metric(text, "ferry_num_requests_running") == 0


def test_request_timeout_ends_and_frees_the_request(limited):
    long = {"prompt": "Tell me a long story.", "max_tokens": 4000, "ignore_eos": True}
    t0 = time.monotonic()
    status, _, data = raw(limited, "POST", "/v1/completions", bearer("b"), json.dumps(long).encode())
    assert status == 504 and json.loads(data)["error"]["code"] == "request_timeout"
    assert time.monotonic() - t0 < 5
    stream = json.dumps({**long, "stream": True}).encode()
    status, h, data = raw(limited, "POST", "/v1/completions", bearer("b"), stream)
    if status == 200:  # the stream had begun: it ends with an error event
        events = [line[6:] for line in data.decode().splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "request_timeout"
    else:  # no token within the timeout (a loaded machine): a plain 504 before the stream begins
        assert status == 504 and json.loads(data)["error"]["code"] == "request_timeout"
    deadline = time.monotonic() + 5
    while not _kv_idle(limited) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _kv_idle(limited), get(limited.url + "/metrics")[1]
