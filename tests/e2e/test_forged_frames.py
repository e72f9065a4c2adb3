"""Forged frames from an insider (a process of the same user, the one who can reach the ipc run directory): every
socket the server binds gets garbage, messages of the wrong type, and well-formed but implausible messages of every
type it takes, while a request streams. The server must keep serving: the same answer, /health 200, no process
gone. (An outsider cannot send at all: the run directory is private, tests/services/test_security.py.)"""
from __future__ import annotations

import os
import stat
import threading
import time

import msgpack
import pytest
import zmq
from _pipeline import Server, alive, child_pids, ferry_command, free_port, get, post

from shared.codec import encode, pack_ids
from shared.messages import (
    AbortRequest,
    ChoiceDelta,
    DetokRegister,
    EngineRequest,
    Heartbeat,
    NewSequence,
    RequestError,
    RequestOutput,
    RunnerReady,
    SchedulerPing,
    SeqDelta,
    StepPlan,
    StepResult,
    TokenBatch,
    Tokenized,
    TokenizeRequest,
    WorkerStatus,
)
from shared.sampling_params import SamplingParams

DEAD_PID = 2 ** 22 + 4321  # above any pid_max: no such process
BIG = 10 ** 9
CHAT = {"messages": [{"role": "user", "content": "Name three colors."}], "max_tokens": 24, "temperature": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("forged")
    port = free_port()
    run_dir = str(tmp / "run")
    argv = ferry_command() + ["serve", "--port", str(port), "--run-dir", run_dir, "--peer-timeout", "3"]
    s = Server(argv, port, str(tmp / "ferry.log"))
    s.run_dir = run_dir
    try:
        yield s.wait_ready()
    finally:
        s.stop()


def chat(server) -> str:
    status, body = post(server.url + "/v1/chat/completions", CHAT, timeout=60)
    assert status == 200, body
    return body["choices"][0]["message"]["content"]


def plan(step_id: int, session: str) -> StepPlan:
    ids = pack_ids([0])
    return StepPlan(step_id, [NewSequence(BIG, pack_ids([BIG]), SamplingParams(max_tokens=1), b"")], ids, ids, ids,
                    pack_ids([BIG]), ids, pack_ids([1]), pack_ids([BIG]), b"\x01", b"", session)


def forged() -> dict[str, list]:
    """Socket name -> what an insider sends it: well-formed messages that must be judged implausible."""
    p = SamplingParams(max_tokens=4)
    oov = [pack_ids([1, 2, BIG]), pack_ids([-1]), pack_ids([2 ** 31 - 1])]
    to_scheduler = [EngineRequest(f"oov{i}", 0, ids, p) for i, ids in enumerate(oov)]
    to_scheduler += [
        EngineRequest("wide", 0, pack_ids([1, 2]), SamplingParams(max_tokens=1, n=BIG)),
        EngineRequest("nan", 0, pack_ids([1, 2]), SamplingParams(max_tokens=1, top_p=float("nan"), top_k=BIG)),
        EngineRequest("nowhere", BIG, pack_ids([BIG]), p),  # its error goes to a gateway that cannot exist
        AbortRequest("nobody"), AbortRequest("nobody", 0, "abort", BIG),
        Heartbeat("tokenizer", WorkerStatus(7, DEAD_PID)), Heartbeat("tokenizer", WorkerStatus(BIG, 1)),
        Heartbeat("detokenizer", WorkerStatus(0, DEAD_PID)), Heartbeat("gateway", WorkerStatus(0, 1)),
    ]
    to_runner_out = []
    for step in range(8):  # results of every early step id: errors and tokens, of no session or a guessed one
        for session in ("", "guessed"):
            to_runner_out += [StepResult(step, b"", b"", error="forged failure", session=session),
                              StepResult(step, pack_ids([0]), pack_ids([BIG]), session=session)]
    to_runner_out += [RunnerReady(0, 1, 16, "new-instance"), RunnerReady(0, 1, BIG, "new-instance", "guessed"),
                      RunnerReady(5, 1, 16, "x"), RunnerReady(-1, 1, 16, "x")]
    to_detokenizer = [
        DetokRegister("reg", 0, BIG, b""), DetokRegister("tail", 0, 1, pack_ids([BIG, -7])),
        TokenBatch([SeqDelta("unknown", 0, 0, pack_ids([1, 2]), "stop"), SeqDelta("tail", 0, 0, pack_ids([BIG]))]),
        RequestError("unknown", BIG, 500, "forged", "server_error"), RequestError("unknown", 0, 999, "x", "y"),
    ]
    to_gateway = [RequestOutput("unknown", 0, [ChoiceDelta(0, "forged text", "stop")]), Tokenized("unknown", 0),
                  RequestError("unknown", 0, 200, "forged", "x")]
    to_tokenizer = [
        TokenizeRequest("t1", 0, p, prompt_token_ids=oov[0]), TokenizeRequest("t2", BIG, p, prompt="hi"),
        TokenizeRequest("t3", 0, p, messages=[{"role": 7}, "not a dict"]),
        TokenizeRequest("t4", 0, SamplingParams(max_tokens=1, top_p=float("nan")), prompt="hi"),
        TokenizeRequest("t5", 0, p),  # none of messages / prompt / ids
    ]
    to_runner = [SchedulerPing("forged session"), plan(0, ""), plan(1, "guessed"), SchedulerPing("")]
    return {"scheduler": to_scheduler, "runner_out": to_runner_out, "detokenizer": to_detokenizer,
            "gateway.0": to_gateway, "tokenizer.0": to_tokenizer, "runner.0": to_runner}


def garbage() -> list[bytes]:
    wrong_type = encode(SchedulerPing("wrong socket"))
    return [os.urandom(64), b"", msgpack.packb([23, "no"]), msgpack.packb([BIG]), wrong_type,
            msgpack.packb([41, "r", 0, b"\x00\x00\x00", [1] * 30])]


def send_all(run_dir: str, rounds: int) -> None:
    ctx = zmq.Context()
    socks = {}
    for name in forged():
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, 2000)
        s.setsockopt(zmq.SNDHWM, 0)
        s.connect(f"ipc://{run_dir}/{name}")
        socks[name] = s
    for _ in range(rounds):
        for name, msgs in forged().items():
            for frame in garbage() + [encode(m) for m in msgs]:
                socks[name].send(frame)
        time.sleep(0.05)
    for s in socks.values():
        s.close()
    ctx.term()


def test_the_run_dir_and_its_sockets_are_private(server):
    assert stat.S_IMODE(os.lstat(server.run_dir).st_mode) == 0o700
    for name in ("scheduler", "runner_out", "detokenizer", "gateway.0", "tokenizer.0", "runner.0", "stats"):
        assert stat.S_IMODE(os.stat(os.path.join(server.run_dir, name)).st_mode) == 0o600, name


def test_forged_frames_leave_the_server_serving(server):
    pids = child_pids(server.logs())
    before = chat(server)
    streamed: dict = {}

    def during():
        streamed["text"] = chat(server)

    t = threading.Thread(target=during)
    t.start()  # a request in flight while forged results, plans and pings arrive
    send_all(server.run_dir, rounds=20)
    t.join(90)
    assert streamed.get("text") == before
    big = zmq.Context()
    s = big.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 3000)
    s.connect(f"ipc://{server.run_dir}/scheduler")
    s.send(b"\x00" * (80 * 1024 * 1024))  # over max_frame_bytes: the scheduler disconnects us, buffers nothing whole
    s.close()
    big.term()
    time.sleep(4.0)  # past peer_timeout: spoofed heartbeats and forged readiness would show by now
    assert all(alive(pid) for pid in pids.values()), pids
    assert get(server.url + "/health")[0] == 200
    assert chat(server) == before
    logs = server.logs()
    assert "engine down" not in logs and "session changed" not in logs and "exited" not in logs, logs[-6000:]
    for line in ("dropped a result", "dropped plan", "ignored a ping", "dropped a malformed frame",
                 "dropped a heartbeat", "dropped a registration"):
        assert line in logs, line
