"""Latency of one hidden-state all-reduce on two GPUs under a few NCCL settings and ferry's peer-memory
all-reduce, and the fused all-reduce + RMSNorm checked bitwise against NCCL + the norm kernel.

    python3 -m benchmarks.tp_allreduce [--device cpu]    # also: python3 -m benchmarks.tp_gpu_check --allreduce

Each variant runs in two spawned ranks. Prints one line per variant and the fastest plain all-reduce at batch 1;
with $OUT set, writes allreduce.json (every row) and best_env (that variant's environment).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import socket
import time

import torch

# The host's GPUs are shared: NVLink multicast stays off in every process (children inherit these).
HOST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ALLREDUCE_VARIANTS = [("NCCL default", {"FERRY_PEER_ALLREDUCE": "0"}),
                      ("peer memory (engine.parallel.PeerAllReduce)", {"FERRY_PEER_ALLREDUCE": "1"}),
                      ("NCCL_PROTO=LL", {"NCCL_PROTO": "LL", "FERRY_PEER_ALLREDUCE": "0"}),
                      # with the residual add and RMSNorm after it: peer all-reduce + norm kernel vs one fused kernel
                      ("peer all-reduce, then RMSNorm", {"FERRY_PEER_ALLREDUCE": "1", "FERRY_FUSED_ALLREDUCE_NORM": "0",
                                                         "CHECK_NORM": "1"}),
                      ("fused all-reduce + RMSNorm (engine.parallel.PeerAllReduceRMSNorm)",
                       {"FERRY_PEER_ALLREDUCE": "1", "CHECK_NORM": "1"})]


def _allreduce_rank(rank: int, port: int, device: str, env: dict, results) -> None:
    """Latency of one hidden-state all-reduce ([rows, 4096] bf16), eagerly and as 64 in a row in a CUDA graph
    (the shape of a decode step: two per layer)."""
    os.environ.update(env)
    os.environ.update(HOST_ENV)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    try:
        _allreduce_times(rank, device, results)
    except Exception as e:
        results.put({"error": f"rank {rank}: {e!r}"[:500]})
        raise


def _allreduce_times(rank: int, device: str, results) -> None:
    import torch.distributed as dist

    from engine.parallel import init_tensor_parallel

    dev = torch.device(device, rank) if device == "cuda" else torch.device("cpu")
    if device == "cuda":
        torch.cuda.set_device(dev)
    init_tensor_parallel(2, rank, dev)
    from engine.parallel import all_reduce, enable_peer_all_reduce

    out = {"peer": enable_peer_all_reduce(torch.bfloat16, dev, 4096)}
    if os.environ.get("CHECK_NORM"):
        out.update(_norm_times(rank, dev))
        dist.barrier()
        if rank == 0:
            results.put(out)
        dist.destroy_process_group()
        return
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for rows in (1, 64):
        x = torch.full((rows, 4096), float(rank + 1), dtype=torch.bfloat16, device=dev)
        out[f"sum_ok_{rows}"] = bool((all_reduce(x.clone()) == 3).all().item())
        x.zero_()  # zeros: in-place NCCL sums stay finite
        for _ in range(20):
            all_reduce(x)
        sync()
        t0 = time.perf_counter()
        for _ in range(200):
            all_reduce(x)
        sync()
        out[f"eager_us_{rows}"] = (time.perf_counter() - t0) / 200 * 1e6
        if device == "cuda":
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, capture_error_mode="thread_local"):
                for _ in range(64):
                    x = all_reduce(x)
            from engine.cuda_graphs import replay_time_ms

            out[f"graph_us_{rows}"] = replay_time_ms(g) * 1e3 / 64  # 64 all-reduces per replay
            del g
    dist.barrier()
    if rank == 0:
        results.put(out)
    dist.destroy_process_group()


def _norm_times(rank: int, dev: torch.device) -> dict:
    """All-reduce + residual add + RMSNorm through the model's RMSNorm(reduce=True): fused where
    FERRY_FUSED_ALLREDUCE_NORM allows. Checks it against NCCL + the norm kernel (bitwise, random data, 200
    calls, row counts varying), then times 64 in a row in a CUDA graph."""
    import torch.distributed as dist

    from engine.layers.norm import RMSNorm
    from engine.parallel import _peer_norm
    from kernels import rms_norm

    out = {"fused": _peer_norm is not None}
    with torch.device(dev):  # a layer picks its CPU-or-Triton function when built, on the default device
        norm = RMSNorm(4096, 1e-5).to(dtype=torch.bfloat16)
    norm.weight.normal_(1.0, 0.1, generator=torch.Generator(dev).manual_seed(0))
    gen = torch.Generator(dev).manual_seed(100 + rank)
    shared = torch.Generator(dev).manual_seed(7)
    mismatches = 0
    for i in range(200):
        rows = [1, 3, 64, 17, 256][i % 5]
        x = torch.randn(rows, 4096, device=dev, generator=gen).to(torch.bfloat16)
        res = torch.randn(rows, 4096, device=dev, generator=shared).to(torch.bfloat16)
        got, got_res = norm(x, res, reduce=True)
        total = x.clone()
        dist.all_reduce(total)
        want, want_res = rms_norm(total, norm.weight, 1e-5, res)
        mismatches += int(not (torch.equal(got, want) and torch.equal(got_res, want_res)))
    out["mismatches_of_200"] = mismatches
    for rows in (1, 64):
        x = torch.zeros(rows, 4096, dtype=torch.bfloat16, device=dev)
        res = torch.zeros_like(x)
        for _ in range(3):
            norm(x, res, reduce=True)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, capture_error_mode="thread_local"):
            y, r = x, res
            for _ in range(64):
                y, r = norm(y, r, reduce=True)
        from engine.cuda_graphs import replay_time_ms

        out[f"graph_us_{rows}"] = replay_time_ms(g) * 1e3 / 64
        del g
    return out


def allreduce_bench(device: str, log) -> list[dict]:
    ctx = mp.get_context("spawn")
    rows = []
    for name, env in ALLREDUCE_VARIANTS:
        results = ctx.Queue()
        port = free_port()
        procs = [ctx.Process(target=_allreduce_rank, args=(r, port, device, env, results)) for r in range(2)]
        for p in procs:
            p.start()
        res, t0 = {"error": "no answer in 60 s"}, time.monotonic()
        while time.monotonic() - t0 < 60:
            try:
                res = results.get(timeout=1.0)
                break
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    time.sleep(1.0)
                    try:
                        res = results.get_nowait()
                    except queue.Empty:
                        res = {"error": f"exit codes {[p.exitcode for p in procs]}"}
                    break
        for p in procs:
            p.join(timeout=20)
            if p.is_alive():
                p.kill()
        rows.append(dict(variant=name, env=env, **res))
        log(f"all-reduce [{name}]: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in res.items()))
    return rows


def run_allreduce(device: str) -> None:
    """Every variant, the fastest at batch 1 printed last (and its environment written to $OUT/best_env)."""
    rows = allreduce_bench(device, lambda line: print(line, flush=True))
    key = "graph_us_1" if device == "cuda" else "eager_us_1"
    ok = [r for r in rows if key in r and "CHECK_NORM" not in r["env"]]  # plain all-reduces only
    best = min(ok, key=lambda r: r[key]) if ok else rows[0]
    print(f"fastest at batch 1: {best['variant']}", flush=True)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "allreduce.json"), "w") as fh:
            json.dump(rows, fh, indent=1)
        with open(os.path.join(os.environ["OUT"], "best_env"), "w") as fh:
            fh.write(" ".join(f"{k}={v}" for k, v in best["env"].items()) or "FERRY_NOTHING=1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = ap.parse_args()
    os.environ.update(HOST_ENV)
    run_allreduce(args.device)


if __name__ == "__main__":
    main()
