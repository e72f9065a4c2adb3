import asyncio
import os

import msgpack
import zmq
import zmq.asyncio

from shared.codec import encode
from shared.messages import AbortRequest, Heartbeat, WorkerStatus
from shared.settings import Settings
from shared.sockets import AsyncPushSocket, PullSocket, PushSocket, endpoint


def test_endpoints_ipc_and_tcp(tmp_path):
    s = Settings(run_dir=str(tmp_path))
    assert endpoint(s, "scheduler") == f"ipc://{tmp_path}/scheduler"
    assert endpoint(s, "tokenizer", 3) == f"ipc://{tmp_path}/tokenizer.3"
    t = Settings(run_dir="tcp://127.0.0.1:6000")
    assert endpoint(t, "scheduler") == "tcp://127.0.0.1:6000"
    assert endpoint(t, "runner", 1) == "tcp://127.0.0.1:6011"
    assert endpoint(t, "tokenizer", 2) == "tcp://127.0.0.1:6102"
    assert endpoint(t, "gateway", 0) == "tcp://127.0.0.1:7000"
    default = Settings(port=8765)
    assert endpoint(default, "stats").endswith(f"ferry-{os.getuid()}-8765/stats")


def test_malformed_frames_are_dropped(tmp_path, caplog):
    ctx = zmq.Context()
    addr = f"ipc://{tmp_path}/in"
    pull = PullSocket(ctx, addr, expect=AbortRequest)
    raw = ctx.socket(zmq.PUSH)
    raw.connect(addr)
    push = PushSocket(ctx, addr)
    raw.send(os.urandom(64))
    raw.send(msgpack.packb({"not": "a message"}))
    raw.send(msgpack.packb([42, "too", "few"]))  # known tag, wrong field types
    push.send(Heartbeat("tokenizer", WorkerStatus(0, 1)))  # a real message of the wrong kind for this socket
    push.send(AbortRequest("r1", 0))
    assert pull.recv(timeout=2.0) == AbortRequest("r1", 0)
    assert pull.recv(timeout=0.05) is None
    assert sum("dropped a malformed frame" in r.message for r in caplog.records) == 4
    ctx.destroy(0)


def test_drain_and_send_without_peer(tmp_path):
    ctx = zmq.Context()
    addr = f"ipc://{tmp_path}/q"
    lonely = PushSocket(ctx, f"ipc://{tmp_path}/nobody", immediate=True)
    assert lonely.send(AbortRequest("x")) is False  # no peer: fails at once, never blocks
    pull = PullSocket(ctx, addr)
    push = PushSocket(ctx, addr)
    for i in range(5):
        push.send(AbortRequest(f"r{i}"))
    assert pull.recv(timeout=2.0).request_id == "r0"
    got = []
    for _ in range(50):
        got += pull.drain()
        if len(got) == 4:
            break
        pull.sock.poll(100)
    assert [m.request_id for m in got] == ["r1", "r2", "r3", "r4"]
    assert encode(got[0])  # round-trips
    ctx.destroy(0)


def test_async_send_without_peer_says_so(tmp_path):
    """An asyncio socket's send hands back a future: a send no peer took must still come back False (the gateway
    skips a dead tokenizer worker on that), and a taken one True."""
    async def run():
        actx = zmq.asyncio.Context()
        lonely = AsyncPushSocket(actx, f"ipc://{tmp_path}/nobody", immediate=True)
        assert lonely.send(AbortRequest("x")) is False
        pull = PullSocket(zmq.Context.instance(), f"ipc://{tmp_path}/somebody")
        push = AsyncPushSocket(actx, f"ipc://{tmp_path}/somebody", immediate=True)
        for _ in range(100):  # the connection completes in the background
            if push.send(AbortRequest("y")):
                break
            await asyncio.sleep(0.02)
        assert pull.recv(timeout=2.0) == AbortRequest("y")
        pull.close()
        actx.destroy(0)
    asyncio.run(run())


def test_a_slow_reader_loses_nothing(tmp_path):
    """Far more messages than ZeroMQ's default high-water marks (1000 per side) wait for a reader that
    has not read yet: every one arrives (outputs must never be dropped under load)."""
    ctx = zmq.Context()
    addr = f"ipc://{tmp_path}/slow"
    pull = PullSocket(ctx, addr, expect=AbortRequest)
    push = PushSocket(ctx, addr)
    assert all(push.send(AbortRequest(f"r{i}")) for i in range(5000))
    got = []
    while len(got) < 5000:
        msg = pull.recv(timeout=5.0)
        assert msg is not None, f"only {len(got)} of 5000 arrived"
        got.append(msg.request_id)
    assert got == [f"r{i}" for i in range(5000)]
    push.close()
    pull.close()
    ctx.term()
