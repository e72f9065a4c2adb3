"""The gateway's cost per output on its reply path, on the CPU: one frame per request per step (before issue
gw-load) against one RequestOutputs frame per step, through a real ipc socket into a real EngineClient.

    PYTHONPATH=. python -m benchmarks.gateway_delivery [--streams 1000] [--steps 40]

Prints, per layout: the reader's wall time per output (decode + dispatch onto the requests' queues) and how many
times another task got the event loop while the backlog was read (0: the loop starved while the backlog lasted).
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

import zmq

from services.gateway.engine_client import EngineClient
from services.gateway.metrics import Metrics
from shared.codec import pack_ids
from shared.messages import ChoiceDelta, RequestOutput
from shared.output_batch import RequestOutputs
from shared.settings import Settings
from shared.sockets import PushSocket, endpoint


def _output(i: int, k: int) -> RequestOutput:
    return RequestOutput(f"cmpl-{i:032x}", 0, [ChoiceDelta(0, " word", None, k + 1, [], pack_ids([1234]))])


async def _read(settings, streams: int, steps: int, batched: bool) -> tuple[float, int]:
    client = EngineClient(settings, Metrics(0))
    for i in range(streams):
        client.runs[f"cmpl-{i:032x}"] = (asyncio.Queue(), 0)
    ctx = zmq.Context()
    push = PushSocket(ctx, endpoint(settings, "gateway", 0))
    for k in range(steps):  # the backlog is there before the reader starts, as after a stall
        if batched:
            push.send(RequestOutputs(0, [_output(i, k) for i in range(streams)]))
        else:
            for i in range(streams):
                push.send(_output(i, k))
    await asyncio.sleep(0.5)
    total, other = streams * steps, [0]
    last = client.runs[f"cmpl-{streams - 1:032x}"][0]  # the last output of the backlog is its last step's

    async def other_task():
        while last.qsize() < steps:
            other[0] += 1
            await asyncio.sleep(0)

    start = time.perf_counter()
    client.start()
    await asyncio.wait_for(other_task(), 300)
    took = time.perf_counter() - start
    await client.stop()
    push.close()
    ctx.destroy(0)
    return took / total * 1e6, other[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    print(f"{args.streams} streams x {args.steps} steps queued at the gateway")
    print(f"{'layout':28s} {'us/output':>10s} {'other task ran':>15s}")
    for batched in (False, True):
        with tempfile.TemporaryDirectory() as run:
            settings = Settings(run_dir=run + "/run")
            us, other = asyncio.run(_read(settings, args.streams, args.steps, batched))
        name = "RequestOutputs per step" if batched else "RequestOutput per request"
        print(f"{name:28s} {us:10.2f} {other:15d}")


if __name__ == "__main__":
    main()
