"""Where a mixed step's time goes (chunked prefill beside a full decode batch), on a GPU:

    python3 -m benchmarks.profile_mixed [--decodes 250] [--context 300] [--prefill 512] [--profile-decode]

Brings `decodes` sequences of `context` tokens to decoding, then times steps that add a `prefill`-token
prompt to that batch (wall time per step, host sync included) and prints the CUDA kernels of one such
step by total time (torch.profiler)."""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from shared.codec import unpack_ids
from shared.sampling_params import SamplingParams
from shared.settings import Settings


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--decodes", type=int, default=250)
    ap.add_argument("--context", type=int, default=300)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--hf-config", default="llama-3.1-8b")
    ap.add_argument("--profile-decode", action="store_true",
                    help="profile a pure decode step of the `decodes` sequences instead of a mixed one")
    args = ap.parse_args()
    from engine.llm import LLM

    llm = LLM(Settings(load_format="dummy", hf_config=args.hf_config, dtype="bfloat16", device="cuda",
                       max_model_len=4096, max_num_seqs=256))
    rng = np.random.default_rng(0)
    vocab = llm.model_config.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=2000, ignore_eos=True)
    for i in range(args.decodes):
        llm.scheduler.add_request(f"d{i}", 0, rng.integers(0, vocab, args.context).tolist(), params)
    while llm.scheduler.waiting or any(s.num_output_tokens == 0 for s in llm.scheduler.running):
        llm.step()
    times = {"decode": [], "mixed": []}
    for i in range(12):
        if i % 2:
            llm.scheduler.add_request(f"p{i}", 0, rng.integers(0, vocab, args.prefill).tolist(),
                                      SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True))
        plan = llm.scheduler.schedule()
        nt = unpack_ids(plan.num_tokens)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        llm.scheduler.update(llm.runner.execute(plan))
        kind = "mixed" if nt.max() > 1 else "decode"
        times[kind].append((time.perf_counter() - t0) * 1e3)
        print(f"step {i}: {len(nt)} seqs, {int(nt.sum())} tokens, {times[kind][-1]:.2f} ms", flush=True)
    if not args.profile_decode:
        llm.scheduler.add_request("prof", 0, rng.integers(0, vocab, args.prefill).tolist(),
                                  SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True))
    plan = llm.scheduler.schedule()
    # eager: every kernel shows (their GPU times are what the graphs replay)
    graphs, mixed, llm.runner.graphs, llm.runner.mixed_graphs = llm.runner.graphs, llm.runner.mixed_graphs, None, None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        llm.scheduler.update(llm.runner.execute(plan))
        torch.cuda.synchronize()
    llm.runner.graphs, llm.runner.mixed_graphs = graphs, mixed
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
    for k, v in times.items():
        if v:
            print(f"{k}: median {sorted(v)[len(v) // 2]:.2f} ms over {len(v)} steps")


if __name__ == "__main__":
    main()
