"""Tensor parallelism on two GPUs, in one run: TP=1 against TP=2 decode speed, CUDA graphs included.

    python3 -m benchmarks.tp_gpu_check [--skip-70b]            # a host with 2 GPUs
    python3 -m benchmarks.tp_gpu_check --device cpu --tiny     # dry run of this script's logic (gloo, tiny shapes)
    python3 -m benchmarks.tp_gpu_check --allreduce             # only benchmarks/tp_allreduce.py (all-reduce latency)

Every group runs in spawned processes (the parent never touches a GPU): TP=1 as one process on GPU 0, TP=2
as two ranks on GPUs 0 and 1 over NCCL. Rank 0 runs the LLM and its scheduler and sends each encoded
StepPlan to rank 1 through a pipe, as tests/engine/test_tensor_parallel.py does through a queue; control
messages (new runner, graphs on/off, back-to-back graph replays) travel the same way so both ranks stay
in step.

Measured, in this order:
1. correctness, fp32 with TF32 off: tiny random Llama models from safetensors (one with a single KV head,
   replicated over the ranks); TP=2 greedy output (CUDA graphs, then eager) must equal TP=1's;
2. Llama-3.1-8B shape, dummy bf16 weights made identical for TP=1 and TP=2 (each full tensor drawn from a
   per-tensor seed, then sharded by the weight loaders): batch-1 decode (5-token prompt, 256 new tokens,
   greedy, ignore_eos) with graphs and eagerly, batch-64 decode, the GPU time of one graph replay, and the
   greedy agreement of TP=2 with TP=1 in bf16 (reported, not required: the reduction order differs);
3. Llama-3-70B shape, dummy bf16, TP=2 only (141 GB of weights): batch-1 and batch-64 decode.
With --pdl-sweep 0,1,...: after the 8B bench, its graphs are captured again with programmatic dependent
launch off (0) or on (1) in that order and batch 1 is timed for each (kernels/pdl.py's switch).
If the TP=2 group fails with CUDA graphs, it is rerun (graphs without NCCL's graph buffer registration, then
eagerly) and the failure is reported.
"""
from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import queue
import tempfile
import time
import traceback

import numpy as np
import torch

from benchmarks.tp_allreduce import HOST_ENV, free_port, run_allreduce
from fixtures.prompts import TP_PROMPTS

TINY_MODELS = ["llama", "llama-tied-llama3-rope"]
TINY_TOKENS = 20
B1_PROMPT = [128000, 791, 6864, 315, 9822]
AGREE_PROMPTS = [[128000, 791, 6864, 315, 9822], [128000, 40, 1093, 311, 1373, 922, 279]]
AGREE_TOKENS = 32
# --tiny: a small Llama shape standing in for both full-size shapes
TINY_SHAPE = dict(architectures=["LlamaForCausalLM"], hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=512, rope_theta=500000.0,
                  max_position_embeddings=8192, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                  tie_word_embeddings=False)


def _free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------ weights

def checkpoint_shapes(cfg) -> list[tuple[str, tuple[int, ...]]]:
    """Hugging Face names and full shapes of a Llama checkpoint's matrices (norms stay at 1.0)."""
    h, d = cfg.hidden_size, cfg.head_dim
    names = [("model.embed_tokens.weight", (cfg.vocab_size, h))]
    if not cfg.tie_word_embeddings:
        names.append(("lm_head.weight", (cfg.vocab_size, h)))
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        names += [(p + "self_attn.q_proj.weight", (cfg.num_heads * d, h)),
                  (p + "self_attn.k_proj.weight", (cfg.num_kv_heads * d, h)),
                  (p + "self_attn.v_proj.weight", (cfg.num_kv_heads * d, h)),
                  (p + "self_attn.o_proj.weight", (h, cfg.num_heads * d)),
                  (p + "mlp.gate_proj.weight", (cfg.intermediate_size, h)),
                  (p + "mlp.up_proj.weight", (cfg.intermediate_size, h)),
                  (p + "mlp.down_proj.weight", (h, cfg.intermediate_size))]
    return names


@torch.no_grad()
def refill_same_everywhere(runner) -> None:
    """Replace the dummy weights by ones every TP size agrees on: each full tensor comes from its own seed on
    this rank's device (same GPU model, same values) and the weight loaders keep this rank's shard."""
    model, cfg, dev = runner.model, runner.model_config, runner.device
    params = dict(model.named_parameters(remove_duplicate=False))
    for seed, (name, shape) in enumerate(checkpoint_shapes(cfg)):
        target, shard = name, None
        for ckpt, (ours, shard_id) in model.packed_modules.items():
            if f".{ckpt}." in name:
                target, shard = name.replace(f".{ckpt}.", f".{ours}."), shard_id
                break
        param = params[target]
        gen = torch.Generator(device=dev).manual_seed(1000 + seed)
        full = torch.empty(shape, dtype=param.dtype, device=dev).uniform_(-0.02, 0.02, generator=gen)
        if shard is None:
            param.weight_loader(param, full)
        else:
            param.weight_loader(param, full, shard)
        del full


# ------------------------------------------------------------------------------------------ ranks

class ForwardingRunner:
    """What rank 0's LLM sees as its runner: each plan goes to the other ranks first, then runs here.
    (gpu_check.run_steps wraps and later deletes `execute` on this object; the class method stays.)"""

    def __init__(self, runner, send):
        self._runner, self._send = runner, send

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def execute(self, plan):
        from shared.codec import encode

        self._send(("plan", encode(plan)))
        return self._runner.execute(plan)

    def submit(self, plan):
        from shared.codec import encode

        self._send(("plan", encode(plan)))
        return self._runner.submit(plan)


def replay_ms(runner, bs: int, n: int = 20) -> float | None:
    """GPU time of one decode-graph replay, back to back (every rank must call this together under TP)."""
    from engine.cuda_graphs import replay_time_ms

    if runner.graphs is None or bs not in runner.graphs.graphs:
        return None
    return replay_time_ms(runner.graphs.graphs[bs], n)


def profile_replay(runner, bs: int, n: int = 10, top: int = 20) -> dict | None:
    """Where one decode-graph replay's GPU time goes: kernels by name (CUPTI sees the kernels inside a graph),
    per replay. Every rank replays; rank 0's profile is returned."""
    from torch.profiler import ProfilerActivity, profile

    if runner.graphs is None or bs not in runner.graphs.graphs:
        return None
    graph = runner.graphs.graphs[bs]
    graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            graph.replay()
        torch.cuda.synchronize()
    kernels = [(e.key, e.count / n, e.self_device_time_total / n) for e in prof.key_averages()
               if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0]
    kernels.sort(key=lambda k: -k[2])
    return dict(kernels_per_replay=sum(k[1] for k in kernels), kernel_us_per_replay=sum(k[2] for k in kernels),
                replay_ms=replay_ms(runner, bs),
                top=[(name[:90], round(count, 2), round(us, 1)) for name, count, us in kernels[:top]])


class Rank:
    """One rank's state: its current runner, built and torn down by control messages on every rank."""

    def __init__(self, rank: int, device: str):
        self.rank, self.device = rank, device
        self.runner = None
        self.saved_graphs = None

    def build(self, settings_dict: dict, refill: bool) -> None:
        from engine.model_runner import ModelRunner
        from shared.settings import Settings

        self.runner = self.saved_graphs = None
        _free_memory(self.device)
        self.runner = ModelRunner(Settings(**settings_dict), rank=self.rank, show_progress=False)
        if refill:
            refill_same_everywhere(self.runner)
        self.saved_graphs = self.runner.graphs

    def handle(self, msg):
        kind = msg[0]
        if kind == "plan":  # overlapped, as the runner service runs it
            from shared.codec import decode

            assert self.runner.submit(decode(msg[1])) is None  # only rank 0 answers
            return None
        if self.runner is not None and self.runner.has_pending:
            self.runner.flush()
        if kind == "runner":
            self.build(msg[1], msg[2])
        elif kind == "tf32":  # fp32 checks run with TF32 off on every rank
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = msg[1]
            torch.set_float32_matmul_precision("high" if msg[1] else "highest")
        elif kind == "graphs":
            self.runner.graphs = self.saved_graphs if msg[1] else None
        elif kind == "replay":
            return replay_ms(self.runner, msg[1])
        elif kind == "profile":
            return profile_replay(self.runner, msg[1])
        elif kind == "knobs":  # module-level switches ({"module.NAME": value}), then the graphs captured again
            import importlib

            for key, value in msg[1].items():
                module, name = key.rsplit(".", 1)
                setattr(importlib.import_module(module), name, value)
            self.runner.graphs = self.saved_graphs = None
            _free_memory(self.device)
            self.runner.graphs = self.saved_graphs = self.runner._capture_cuda_graphs()
        elif kind == "free":
            self.runner = self.saved_graphs = None
            _free_memory(self.device)
        else:
            raise ValueError(f"unknown control message {kind!r}")


def _rank_main(rank: int, world: int, steps: list, port: int, conn, results, opts: dict) -> None:
    os.environ.update(opts.get("env", {}))
    os.environ.update(HOST_ENV)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    os.environ.setdefault("TQDM_DISABLE", "1")
    if opts["device"] == "cpu":
        torch.set_num_threads(1)
    me = Rank(rank, opts["device"])
    try:
        if rank == 0:
            Driver(me, world, conn, results, opts).run(steps)
        else:
            while True:
                if not conn.poll(900):
                    raise TimeoutError("rank 0 sent nothing for 900 s")
                msg = conn.recv()
                if msg[0] == "stop":
                    break
                me.handle(msg)
        results.put(("done", rank, None))
    except BaseException:
        results.put(("error", rank, traceback.format_exc()[-4000:]))
        raise
    finally:
        import torch.distributed as dist

        if dist.is_initialized() and opts.get("clean_exit", True):
            try:
                dist.destroy_process_group()
            except Exception:
                pass


class Driver:
    """Rank 0: runs the steps, mirroring every control message to the other rank(s)."""

    def __init__(self, me: Rank, world: int, conn, results, opts: dict):
        self.me, self.world, self.conn, self.results, self.opts = me, world, conn, results, opts
        self.dev = opts["device"]
        from benchmarks import gpu_check

        gpu_check.DEVICE = self.dev  # its run_steps syncs this device

    def send(self, msg) -> None:
        if self.conn is not None:
            self.conn.send(msg)

    def everywhere(self, msg):
        self.send(msg)
        return self.me.handle(msg)

    def llm(self):
        from engine.llm import LLM

        return LLM(self.me.runner.settings, runner=ForwardingRunner(self.me.runner, self.send))

    def report(self, key: str, value: dict) -> None:
        self.results.put(("result", key, value))

    def run(self, steps: list) -> None:
        for step in steps:
            getattr(self, "step_" + step[0])(*step[1:])
        self.everywhere(("free",))
        self.send(("stop",))

    # ---------------------------------------------------------------------- steps

    def step_tiny(self, name: str) -> None:
        from benchmarks.gpu_check import greedy
        from fixtures.models import make_hf_model

        self.everywhere(("tf32", False))
        tmp = tempfile.mkdtemp(prefix="ferry-tp-")
        make_hf_model(name, tmp)
        settings = dict(model=tmp, dtype="float32", device=self.dev, num_kv_blocks=64, block_size=4, max_num_seqs=8,
                        tensor_parallel_size=self.world, enforce_eager=not self.opts["graphs"])
        self.everywhere(("runner", settings, False))
        llm = self.llm()
        res = {"graphs_captured": self.me.runner.graphs is not None}
        for mode in ("graphs", "eager"):
            self.everywhere(("graphs", mode == "graphs"))
            res[mode] = greedy(llm, TP_PROMPTS, TINY_TOKENS)[0]
        self.report(f"tiny {name}", res)

    def step_bench(self, label: str, shape: str, refill: bool, b1_eager: bool, agree: bool) -> None:
        from benchmarks.gpu_check import batch1_steps, decode_median, greedy, overlapped_ms_per_token, run_steps
        from shared.sampling_params import SamplingParams

        self.everywhere(("tf32", True))  # bf16 anyway
        self.everywhere(("free",))
        settings = dict(load_format="dummy", hf_config=shape, dtype="bfloat16" if self.dev == "cuda" else "float32",
                        device=self.dev, max_model_len=4096, max_num_seqs=64, num_kv_blocks=self.opts["kv_blocks"],
                        tensor_parallel_size=self.world, enforce_eager=not self.opts["graphs"])
        t0 = time.perf_counter()
        self.everywhere(("runner", settings, refill))
        runner = self.me.runner
        res = dict(load_and_capture_s=time.perf_counter() - t0, graphs_captured=runner.graphs is not None,
                   weight_GB_per_rank=sum(p.numel() * p.element_size() for p in runner.model.parameters()) / 1e9)
        if self.dev == "cuda":
            res["gpu_mem_allocated_GiB"] = torch.cuda.memory_allocated() / 2**30
        print(f"[tp{self.world}] {label}: built in {res['load_and_capture_s']:.1f}s, graphs {res['graphs_captured']},"
              f" {res['weight_GB_per_rank']:.2f} GB of weights on rank 0", flush=True)
        llm = self.llm()
        vocab = runner.model_config.vocab_size
        prompt = [[t % vocab for t in B1_PROMPT]]
        modes = ["graphs"] if runner.graphs is not None else []
        if b1_eager or not modes:
            modes.append("eager")
        for mode in modes:
            self.everywhere(("graphs", mode == "graphs"))
            tok_s, step = batch1_steps(llm, prompt)
            res[f"b1_{mode}_tok_s"], res[f"b1_{mode}_step_ms"] = tok_s, step * 1e3
            print(f"[tp{self.world}] {label} batch 1 {mode}: {tok_s:.1f} tok/s; median decode step {step * 1e3:.2f} ms",
                  flush=True)
            self.report(label, dict(res))  # partial: kept if a later part fails
        self.everywhere(("graphs", True))
        if runner.graphs is not None:
            res["b1_replay_ms"] = self.everywhere(("replay", 1))
            res["b1_profile"] = self.everywhere(("profile", 1))
            prof = res["b1_profile"]
            print(f"[tp{self.world}] {label} batch-1 replay: {prof['kernels_per_replay']:.0f} kernels,"
                  f" {prof['kernel_us_per_replay']:.0f} us of kernel time in {prof['replay_ms'] * 1e3:.0f} us",
                  flush=True)
            for name, count, us in prof["top"]:
                print(f"    {us:8.1f} us  {count:6.1f}x  {name}", flush=True)
        res["b1_overlapped_ms_per_token"] = overlapped_ms_per_token(llm, prompt)
        print(f"[tp{self.world}] {label} batch 1 overlapped: {res['b1_overlapped_ms_per_token']:.3f} ms per token",
              flush=True)
        if self.dev == "cuda":  # all of a token's GPU work, inside the graph and out (rank 0's view)
            from torch.profiler import ProfilerActivity, profile

            n_tok = 64
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=n_tok, ignore_eos=True))
                torch.cuda.synchronize()
            kernels = sorted(((e.key, e.count / n_tok, e.self_device_time_total / n_tok) for e in prof.key_averages()
                              if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0),
                             key=lambda k: -k[2])
            res["b1_token_kernels"] = [(k[:90], round(c, 2), round(us, 1)) for k, c, us in kernels[:25]]
            print(f"[tp{self.world}] {label} batch-1 GPU work per token (overlapped, {n_tok} tokens incl. the"
                  f" prefill): {sum(k[2] for k in kernels):.0f} us", flush=True)
            for name, count, us in res["b1_token_kernels"]:
                print(f"    {us:8.1f} us  {count:6.1f}x  {name}", flush=True)
        rng = np.random.default_rng(0)
        prompts = rng.integers(0, min(vocab, 128000), (64, 5)).tolist()
        run_steps(llm, prompts, 8)
        wall, n, steps = run_steps(llm, prompts, 256)
        step = decode_median(steps)
        res.update(b64_tok_s=n / wall, b64_step_ms=step * 1e3, b64_decode_tok_s=64 / step)
        print(f"[tp{self.world}] {label} batch 64 {'graphs' if runner.graphs is not None else 'eager'}: {n} tokens in"
              f" {wall:.2f}s = {n / wall:.0f} tok/s; median decode step {step * 1e3:.2f} ms = {64 / step:.0f} tok/s",
              flush=True)
        if runner.graphs is not None:
            res["b64_replay_ms"] = self.everywhere(("replay", 64))
        if agree:
            res["agree_outputs"] = greedy(llm, [[t % vocab for t in p] for p in AGREE_PROMPTS], AGREE_TOKENS)[0]
        del llm
        self.report(label, res)

    def step_variants(self, label: str, variants: list) -> None:
        """The runner of the last bench step with its graphs captured again under each variant's knobs
        ([(name, {"module.NAME": value})]): batch-1 graph replay, overlapped batch-1 ms per token, batch-64 replay."""
        from benchmarks.gpu_check import batch1_steps, overlapped_ms_per_token

        if self.me.runner is None or self.me.runner.graphs is None:
            return
        vocab = self.me.runner.model_config.vocab_size
        prompt = [[t % vocab for t in B1_PROMPT]]
        rows = []
        for name, knobs in variants:
            self.everywhere(("knobs", knobs))
            llm = self.llm()
            overlapped = overlapped_ms_per_token(llm, prompt)
            self.everywhere(("graphs", False))  # and one step at a time without graphs (kernel launches from the host)
            eager_ms = batch1_steps(llm, prompt, 64)[1] * 1e3
            self.everywhere(("graphs", True))
            del llm
            row = dict(variant=name, b1_replay_ms=self.everywhere(("replay", 1)), b1_overlapped_ms_per_token=overlapped,
                       b64_replay_ms=self.everywhere(("replay", 64)), b1_eager_step_ms=eager_ms)
            rows.append(row)
            print(f"[tp{self.world}] {label} variant {name}: batch-1 replay {row['b1_replay_ms']:.3f} ms,"
                  f" overlapped {row['b1_overlapped_ms_per_token']:.3f} ms/token, eager step {eager_ms:.2f} ms;"
                  f" batch-64 replay {row['b64_replay_ms']:.3f} ms", flush=True)
            self.report(f"{label} variants", dict(rows=rows))


# ------------------------------------------------------------------------------------------ parent

def run_group(world: int, steps: list, opts: dict, deadline: float, log,
              stall_s: float = 150) -> tuple[dict, str | None]:
    """Spawn `world` ranks, run the steps on rank 0; returns (results by step, error or None). A group that
    reports nothing for stall_s seconds is taken as hung (a collective that never pairs up)."""
    ctx = mp.get_context("spawn")
    recv_end, send_end = ctx.Pipe(duplex=False)
    results = ctx.Queue()
    port = free_port()
    procs = []
    for r in range(world):
        conn = send_end if r == 0 and world > 1 else (recv_end if r > 0 else None)
        procs.append(ctx.Process(target=_rank_main, args=(r, world, steps, port, conn, results, opts)))
    for p in procs:
        p.start()
    send_end.close()  # the ranks hold the pipe now: rank 1 sees EOF if rank 0 dies
    recv_end.close()
    got, error, done = {}, None, set()
    last = time.monotonic()
    try:
        while len(done) < world and error is None:
            try:
                kind, key, value = results.get(timeout=1.0)
                last = time.monotonic()
            except queue.Empty:
                now = time.monotonic()
                if now > deadline or now - last > stall_s:
                    error = f"{'timed out' if now > deadline else 'stalled'}; results so far: {sorted(got)}"
                elif any(p.exitcode not in (None, 0) for p in procs):
                    time.sleep(2.0)  # its error report may still be in flight
                    try:
                        while True:
                            kind, key, value = results.get_nowait()
                            if kind == "error":
                                error = f"rank {key}: {value}"
                                break
                    except queue.Empty:
                        pass
                    error = error or f"a rank died: exit codes {[p.exitcode for p in procs]}"
                continue
            if kind == "result":
                got[key] = value
                log(f"[tp{world}] result {key}: " + json.dumps(value, default=str)[:600])
            elif kind == "error":
                error = f"rank {key}: {value}"
            elif kind == "done":
                done.add(key)
    finally:
        for p in procs:
            p.join(timeout=30 if error is None else 3)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=10)
    return got, error


def fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def agreement(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="small shapes instead of 8B/70B (with --device cpu: a dry run)")
    ap.add_argument("--skip-70b", action="store_true")
    ap.add_argument("--budget-s", type=float, default=400, help="stop starting work after this many seconds")
    ap.add_argument("--allreduce", action="store_true",
                    help="only the all-reduce latency under a few NCCL settings; writes the fastest as best_env")
    ap.add_argument("--pdl-sweep", default="",
                    help="after the 8B bench, time it again with PDL off (0) / on (1) in this order, e.g. 0,1,0,1")
    args = ap.parse_args()
    os.environ.update(HOST_ENV)
    if args.allreduce:
        run_allreduce(args.device)
        return
    t_start = time.monotonic()
    end = t_start + args.budget_s
    out_dir = os.environ.get("OUT")
    report: dict = dict(args=vars(args), env={k: os.environ[k] for k in HOST_ENV})

    def log(line: str) -> None:
        print(line, flush=True)

    def save() -> None:
        if out_dir:
            with open(os.path.join(out_dir, "tp_gpu_check.json"), "w") as fh:
                json.dump(report, fh, indent=1, default=str)

    if args.tiny:
        tmp = tempfile.mkdtemp(prefix="ferry-tp-shape-")
        shape8 = shape70 = os.path.join(tmp, "config.json")
        with open(shape8, "w") as fh:
            json.dump(TINY_SHAPE, fh)
    else:
        shape8, shape70 = "llama-3.1-8b", "llama-3-70b"
    base = dict(device=args.device, graphs=True, kv_blocks=2048)
    tiny_steps = [("tiny", n) for n in TINY_MODELS]

    # PDL off and on in turn (graphs captured again each time), after the 8B bench
    sweep = [("variants", "8b", [(f"PDL {'on' if v == '1' else 'off'}", {"kernels.pdl.ENABLED": v == "1"})
                                 for v in args.pdl_sweep.split(",")])] if args.pdl_sweep else []

    # TP=1 on GPU 0
    steps1 = tiny_steps + [("bench", "8b", shape8, True, True, True)] + sweep
    tp1, err1 = run_group(1, steps1, base, min(end, time.monotonic() + (260 if sweep else 170)), log)
    report.update(tp1=tp1, tp1_error=err1)
    save()
    if err1:
        log(f"TP=1 failed: {err1}")

    # TP=2 on GPUs 0 and 1: CUDA graphs first; if the 8B numbers are not in, graphs again without NCCL's
    # registration of graph buffers, then eagerly. A later attempt fills only what an earlier one lacks.
    steps2 = tiny_steps + [("bench", "8b", shape8, True, True, True)] + sweep
    if not args.skip_70b:
        steps2.append(("bench", "70b", shape70, False, False, False))
    attempts = [("graphs", base), ("graphs, NCCL_GRAPH_REGISTER=0", dict(base, env={"NCCL_GRAPH_REGISTER": "0"})),
                ("eager", dict(base, graphs=False))]
    tp2, errors2 = {}, []
    report.update(tp2=tp2, tp2_attempts=[])
    for name, opts in attempts:
        if "8b" in tp2 or time.monotonic() > end - 90:
            break
        log(f"TP=2 attempt: {name}")
        got, err = run_group(2, steps2, opts, end - 5, log)
        report["tp2_attempts"].append(dict(attempt=name, error=err, results=sorted(got)))
        for k, v in got.items():
            tp2.setdefault(k, dict(v, attempt=name))
        if err:
            errors2.append((f"TP=2 ({name})", err))
            log(f"TP=2 ({name}) failed: {err}")
        save()

    # ------------------------------------------------------------------ summary
    log("\n==== correctness: TP=2 greedy == TP=1 greedy (fp32, TF32 off, tiny models, 2 prompts x 20 tokens) ====")
    checks = []
    for name in TINY_MODELS:
        ref = tp1.get(f"tiny {name}", {}).get("graphs")
        for mode in ("graphs", "eager"):
            got = tp2.get(f"tiny {name}", {}).get(mode)
            ok = ref is not None and got == ref
            captured = tp2.get(f"tiny {name}", {}).get("graphs_captured")
            label = f"tiny {name} TP=2 {mode}" + (" (graphs not captured)" if mode == "graphs" and not captured else "")
            checks.append(dict(check=label, ok=ok))
            log(f"{'PASS' if ok else 'FAIL'}  {label}")
        t1 = tp1.get(f"tiny {name}", {})
        if t1:
            log(f"{'PASS' if t1.get('eager') == t1.get('graphs') else 'FAIL'}  tiny {name} TP=1 eager == TP=1 graphs")
    report["checks"] = checks
    a, b = tp1.get("8b", {}), tp2.get("8b", {})
    if a.get("agree_outputs") and b.get("agree_outputs"):
        same = [agreement(x, y) for x, y in zip(a["agree_outputs"], b["agree_outputs"])]
        report["bf16_agreement"] = same
        log(f"INFO  8B bf16 (same dummy weights): TP=2 equals TP=1 for the first {same} of {AGREE_TOKENS} greedy "
            f"tokens of {len(same)} prompts")
    c = tp2.get("70b", {})
    rows = [
        ("8B graphs captured", a.get("graphs_captured"), b.get("graphs_captured"), None),
        ("8B batch-1 decode step, graphs (ms)", a.get("b1_graphs_step_ms"), b.get("b1_graphs_step_ms"), None),
        ("8B batch-1 decode step, eager (ms)", a.get("b1_eager_step_ms"), b.get("b1_eager_step_ms"), None),
        ("8B batch-1 graph replay, GPU (ms)", a.get("b1_replay_ms"), b.get("b1_replay_ms"), None),
        ("8B batch-1 ms per token, overlapped steps", a.get("b1_overlapped_ms_per_token"),
         b.get("b1_overlapped_ms_per_token"), None),
        ("8B batch-1 tok/s, graphs (whole request)", a.get("b1_graphs_tok_s"), b.get("b1_graphs_tok_s"), None),
        ("8B batch-1 tok/s, eager (whole request)", a.get("b1_eager_tok_s"), b.get("b1_eager_tok_s"), None),
        ("8B batch-64 decode step (ms)", a.get("b64_step_ms"), b.get("b64_step_ms"), None),
        ("8B batch-64 decode tok/s (64 / step)", a.get("b64_decode_tok_s"), b.get("b64_decode_tok_s"), None),
        ("8B batch-64 tok/s (whole run)", a.get("b64_tok_s"), b.get("b64_tok_s"), None),
        ("8B batch-64 graph replay, GPU (ms)", a.get("b64_replay_ms"), b.get("b64_replay_ms"), None),
        ("70B graphs captured", None, c.get("graphs_captured"), None),
        ("70B weights per rank (GB)", None, c.get("weight_GB_per_rank"), None),
        ("70B batch-1 decode step (ms)", None, c.get("b1_graphs_step_ms") or c.get("b1_eager_step_ms"), None),
        ("70B batch-1 tok/s (whole request)", None, c.get("b1_graphs_tok_s") or c.get("b1_eager_tok_s"), None),
        ("70B batch-64 decode step (ms)", None, c.get("b64_step_ms"), None),
        ("70B batch-64 decode tok/s (64 / step)", None, c.get("b64_decode_tok_s"), None),
        ("70B batch-64 tok/s (whole run)", None, c.get("b64_tok_s"), None),
    ]
    log("\n==== speed (dummy bf16 weights; decode step = median wall time of pure-decode steps) ====")
    log(f"| {'measurement':44} | {'TP=1':>9} | {'TP=2':>9} | {'TP=2/TP=1':>9} |")
    log(f"| {'-' * 44} | {'-' * 9}:| {'-' * 9}:| {'-' * 9}:|")
    for label, x, y, _ in rows:
        if x is None and y is None:
            continue
        if isinstance(x, bool) or isinstance(y, bool):
            sx, sy = str(x) if x is not None else "-", str(y) if y is not None else "-"
            log(f"| {label:44} | {sx:>9} | {sy:>9} | {'':>9} |")
            continue
        ratio = y / x if x and y else None
        log(f"| {label:44} | {fmt(x):>9} | {fmt(y):>9} | {fmt(ratio, '.3f'):>9} |")
    best1 = a.get("b1_graphs_step_ms") or a.get("b1_eager_step_ms")
    best2 = b.get("b1_graphs_step_ms") or b.get("b1_eager_step_ms")
    ratio = best2 / best1 if best1 and best2 else None
    report["b1_ratio_tp2_over_tp1"] = ratio
    log(f"\nbatch-1 per-token ratio TP=2 / TP=1, one step at a time (best mode each): {fmt(ratio, '.3f')}")
    o1, o2 = a.get("b1_overlapped_ms_per_token"), b.get("b1_overlapped_ms_per_token")
    report["b1_overlapped_ratio_tp2_over_tp1"] = o2 / o1 if o1 and o2 else None
    log(f"batch-1 per-token ratio TP=2 / TP=1, overlapped steps (as served): "
        f"{fmt(report['b1_overlapped_ratio_tp2_over_tp1'], '.3f')} (target <= 0.65)")
    s1, s2 = (g.get("8b variants", {}).get("rows", []) for g in (tp1, tp2))
    if s1 or s2:
        log("\n==== variants (graphs captured again for each; 8B) ====")
        log("| variant | TP=1 replay ms | TP=2 replay ms | ratio | TP=1 overlapped ms/tok | TP=2 overlapped ms/tok |"
            " ratio | TP=1 b64 replay ms | TP=2 b64 replay ms | TP=1 eager step ms | TP=2 eager step ms |")
        log("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for i in range(max(len(s1), len(s2))):
            x = s1[i] if i < len(s1) else {}
            y = s2[i] if i < len(s2) else {}
            r1 = y.get("b1_replay_ms") / x["b1_replay_ms"] if x.get("b1_replay_ms") and y.get("b1_replay_ms") else None
            o1, o2 = x.get("b1_overlapped_ms_per_token"), y.get("b1_overlapped_ms_per_token")
            log(f"| {x.get('variant', y.get('variant'))} | {fmt(x.get('b1_replay_ms'), '.3f')} | "
                f"{fmt(y.get('b1_replay_ms'), '.3f')} | {fmt(r1, '.3f')} | {fmt(o1, '.3f')} | {fmt(o2, '.3f')} | "
                f"{fmt(o2 / o1 if o1 and o2 else None, '.3f')} | {fmt(x.get('b64_replay_ms'), '.3f')} | "
                f"{fmt(y.get('b64_replay_ms'), '.3f')} | {fmt(x.get('b1_eager_step_ms'))} | "
                f"{fmt(y.get('b1_eager_step_ms'))} |")
    for key, err in [("TP=1", err1)] + errors2:
        if err:
            log(f"{key} error: {err[-1500:]}")
    report["elapsed_s"] = time.monotonic() - t_start
    log(f"elapsed {report['elapsed_s']:.0f}s")
    save()


if __name__ == "__main__":
    main()
