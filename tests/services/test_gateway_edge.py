"""The gateway's edge logic without sockets: the connection guard's limit and timeouts, API key parsing and
matching, CORS origins, admission counts and rate-limit buckets (services/gateway/ connections, auth, cors,
admission)."""
from types import SimpleNamespace

import pytest

from services.gateway.admission import Admission, Bucket
from services.gateway.auth import key_matches, load_keys, open_paths
from services.gateway.connections import ConnectionGuard
from services.gateway.cors import Cors
from shared.errors import Overloaded, RateLimited
from shared.messages import EngineStats, SchedulerCounters
from shared.settings import Settings


class FakeTransport:
    def __init__(self):
        self.aborted = False

    def abort(self):
        self.aborted = True


def test_a_full_guard_evicts_the_longest_idle_connection_and_refuses_when_all_are_busy():
    guard = ConnectionGuard(read_timeout=2.0, max_connections=2)
    a, b, c, d = (FakeTransport() for _ in range(4))
    assert guard.opened(a)
    guard.clock = 1.0
    assert guard.opened(b)
    assert guard.opened(c) and a.aborted and not b.aborted  # a was idle longest
    guard.conns[b].busy = guard.conns[c].busy = 1
    assert not guard.opened(d) and d.aborted and guard.refused == 1  # every slot is answering a request


def test_idle_connections_time_out_on_the_guards_clock_and_busy_ones_do_not():
    guard = ConnectionGuard(read_timeout=2.0, max_connections=10)
    idle, busy = FakeTransport(), FakeTransport()
    guard.opened(idle)
    guard.opened(busy)
    guard.conns[busy].busy = 1
    guard.clock = 1.9
    guard.sweep()
    assert not idle.aborted
    guard.clock = 2.1
    guard.sweep()
    assert idle.aborted and not busy.aborted and list(guard.conns) == [busy]


def test_a_body_that_does_not_arrive_times_out():
    guard = ConnectionGuard(read_timeout=2.0, max_connections=10)
    t = FakeTransport()
    guard.opened(t)
    conn = guard.conns[t]
    body = SimpleNamespace(eof=False)
    conn.busy, conn.reading = 1, SimpleNamespace(content=SimpleNamespace(is_eof=lambda: body.eof))
    guard.clock = 1.0
    guard.sweep()
    assert not t.aborted
    body.eof = True  # it all arrived: the handler may take as long as it needs
    guard.clock = 10.0
    guard.sweep()
    assert not t.aborted
    conn.reading, conn.read_since = SimpleNamespace(content=SimpleNamespace(is_eof=lambda: False)), 10.0
    guard.clock = 12.5
    guard.sweep()
    assert t.aborted


def test_keys_from_the_flag_and_the_file(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# comment\n  k3  \n\nk1\n")
    keys = load_keys(Settings(api_key=" k1, k2 ,", api_key_file=str(f)))
    assert keys == [b"k1", b"k2", b"k3"]
    assert key_matches("k2", keys) and key_matches("k3", keys)
    assert not key_matches("k", keys) and not key_matches("k1 ", keys) and not key_matches("\udcff", keys)
    assert load_keys(Settings()) == []
    assert open_paths(Settings()) == {"/health", "/metrics"}
    assert open_paths(Settings(metrics_require_key=True)) == {"/health"}


def test_cors_origins():
    assert not Cors("").enabled
    cors = Cors("https://a.example/, https://b.example")
    assert cors.allow("https://a.example") == "https://a.example" and cors.allow("https://c.example") is None
    assert cors.allow(None) is None
    assert Cors("*").allow("https://any.example") == "*"


def admission(**kw):
    client = SimpleNamespace(stats=None, num_pending=lambda: client.pending, pending=0)
    return Admission(Settings(**kw), client), client


def test_the_waiting_queue_is_bounded_by_the_larger_count():
    adm, client = admission(max_waiting_requests=3)
    client.pending = 2
    adm.admit("")
    assert adm.overloaded_reason() is None
    client.stats = EngineStats(True, "", SchedulerCounters(num_waiting=5), [])  # other gateways' requests
    with pytest.raises(Overloaded) as e:
        adm.admit("")
    assert e.value.status == 503 and e.value.headers["Retry-After"] == "1"
    assert "overloaded" in adm.overloaded_reason()
    unbounded, client = admission()
    client.pending = 10**6
    unbounded.admit("")


def test_requests_per_minute_per_key():
    adm, _ = admission(rate_limit_rpm=2)
    adm.admit("a", now=0.0)
    adm.admit("a", now=0.0)
    with pytest.raises(RateLimited) as e:
        adm.admit("a", now=1.0)
    assert e.value.status == 429 and int(e.value.headers["Retry-After"]) == 29  # one request refills in 30 s
    adm.admit("b", now=1.0)
    adm.admit("a", now=31.0)


def test_tokens_per_minute_are_charged_when_known():
    adm, _ = admission(rate_limit_tpm=600)
    adm.admit("a", now=0.0)
    adm.charge_tokens("a", 1000, now=0.0)  # in debt by 400 tokens: 40 s at 10 a second
    with pytest.raises(RateLimited) as e:
        adm.admit("a", now=0.0)
    assert int(e.value.headers["Retry-After"]) == 41
    adm.admit("a", now=41.0)


def test_a_bucket_refills_up_to_its_size():
    b = Bucket(60, now=0.0)
    b.level = 0
    assert b.wait_for(1, now=0.5) == pytest.approx(0.5)
    assert b.refill(now=1000.0) == 60
