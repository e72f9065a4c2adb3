"""Issue 6 through the real processes: `ferry serve --tensor-parallel-size 2` on the CPU.

Two runner ranks form one gloo group; greedy text through the HTTP API equals the in-process TP=1
engine's. Then rank 1 is killed: every rank of the group exits, open streams end with an error and
/health turns 503. One server start serves both (the CPU loads the model slowly).
"""
from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest
import zmq
from _checks import check_chat, check_completion, check_concurrent_streams, check_stream, kill_mid_stream
from _pipeline import MODEL, Server, alive, base_env, child_pids, ferry_command, free_port, get, post


@pytest.fixture(scope="module")
def tp_server(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("tp")
    port, master_port = free_port(), free_port()
    argv = ferry_command() + ["serve", "--tensor-parallel-size", "2", "--port", str(port),
                              "--run-dir", str(tmp / "run"), "--peer-timeout", "3", "--max-num-seqs", "8",
                              "--kv-cache-bytes", str(64 * 2**20)]
    # A fresh rendezvous port per test run: runs side by side never join each other's group.
    s = Server(argv, port, str(tmp / "ferry.log"), env=base_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=master_port))
    s.master_port = master_port
    try:
        # The reference engine loads in this process while the ranks load theirs.
        s.llm, s.reference = request.getfixturevalue("llm"), request.getfixturevalue("reference")
        yield s.wait_ready()
    finally:
        s.stop()


def _runner_pids(server) -> tuple[int, int]:
    pids = child_pids(server.logs())
    return pids["runner.0"], pids["runner.1"]


def test_tp2_greedy_text_equals_tp1(tp_server):
    started = time.monotonic()
    logs = tp_server.logs()
    assert "engine ready: " in logs and "2 rank(s)" in logs
    for pid in _runner_pids(tp_server):  # both ranks got the same rendezvous address from the launcher
        assert alive(pid)
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = dict(kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv)
        assert env[b"MASTER_PORT"] == str(tp_server.master_port).encode()
    llm, reference = tp_server.llm, tp_server.reference
    for check in (check_chat, check_completion, check_stream, check_concurrent_streams):
        check(tp_server, llm, reference)  # the last one: 8 streams at once, batched decode across the group
        print(f"{check.__name__} passed at {time.monotonic() - started:.1f}s")


def test_killing_rank_1_takes_the_group_down(tp_server):
    """Last in this module: it leaves the server without runners."""
    rank0, rank1 = _runner_pids(tp_server)
    others = {n: p for n, p in child_pids(tp_server.logs()).items() if not n.startswith("runner.")}
    killed_at = kill_mid_stream(tp_server, rank1)  # rank 0 is (or soon will be) in a collective with rank 1
    health_at = rank0_at = None
    while health_at is None or rank0_at is None:
        since = time.monotonic() - killed_at
        if health_at is None and get(tp_server.url + "/health")[0] == 503:
            health_at = since
        if rank0_at is None and not alive(rank0):
            rank0_at = since
        assert health_at is not None or since < 10, "/health still 200 10s after a rank died"
        assert rank0_at is not None or since < 30, "rank 0 outlived rank 1 by 30s"
        time.sleep(0.05)
    print(f"after SIGKILL of rank 1: rank 0 gone in {rank0_at:.1f}s, /health 503 in {health_at:.1f}s")
    assert not alive(rank1)
    assert all(alive(p) for p in others.values()), others  # only the group went down
    status, err = post(tp_server.url + "/v1/completions", {"model": MODEL, "prompt": "Hi"})
    assert status == 503 and err["error"]["type"] == "service_unavailable"
    assert get(tp_server.url + "/health")[0] == 503


# ---------------------------------------------------------------- the runner's plan reader, alone


@pytest.fixture
def inbox(tmp_path):
    """A PlanInbox on a real socket, with exit() recorded instead of ending pytest."""
    from services.runner.__main__ import PlanInbox
    from services.runner.service import RunnerService
    from shared.sockets import PushSocket, endpoint

    settings = SimpleNamespace(run_dir=str(tmp_path), port=0, rank=0, peer_timeout=0.5, heartbeat_interval=0.1)
    ctx = zmq.Context()
    exits = []  # the reader thread returns after exit(), which here only records the code
    service = RunnerService(SimpleNamespace(num_kv_blocks=1), None, 0, os.getpid(), settings.peer_timeout,
                            time.monotonic())
    box = PlanInbox(settings, ctx, service, exit=exits.append)
    box.exits = exits
    box.scheduler = PushSocket(ctx, endpoint(settings, "runner", 0))
    box.start()
    yield box
    box.scheduler.close()  # the reader's own socket stays with its (ended or idle) thread


def _wait(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_inbox_exits_on_a_new_session_even_while_a_step_is_stuck(inbox):
    from shared.messages import SchedulerPing

    inbox.scheduler.send(SchedulerPing("one"))
    _wait(lambda: inbox.service.session == "one")
    inbox.service.busy_since = time.monotonic()  # the main thread sits in a collective
    inbox.scheduler.send(SchedulerPing("one"))
    time.sleep(0.2)
    assert inbox.exits == []
    inbox.scheduler.send(SchedulerPing("two"))
    _wait(lambda: inbox.exits)
    assert inbox.exits == [3]


def test_inbox_exits_when_the_scheduler_goes_silent_during_a_step(inbox):
    from shared.messages import SchedulerPing

    inbox.scheduler.send(SchedulerPing("one"))
    _wait(lambda: inbox.service.session == "one")
    time.sleep(1.0)  # silent while idle: a runner waits for its scheduler to return
    assert inbox.exits == []
    inbox.service.busy_since = time.monotonic()
    _wait(lambda: inbox.exits)
    assert inbox.exits == [4]
