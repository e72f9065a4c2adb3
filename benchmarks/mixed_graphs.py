"""Mixed-step CUDA graphs (engine/mixed_graphs.py) on a GPU: are they right, and what do they buy?

    python3 -m benchmarks.mixed_graphs [--hf-config llama-3.1-8b] [--max-tokens 512]

1. Check: steps with prompt tokens run both eagerly and through the graph on the same inputs; the hidden states
   must agree to bf16 noise and the sampled rows' greedy tokens must match.
2. Time: `decodes` sequences decoding plus one new prompt of `prefill` tokens, one step each, eager against graph
   (the same runner, its mixed graphs switched off and on), wall time per step with the host sync (median).
Prints a table last."""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from engine.step_inputs import build_step_inputs
from shared.codec import unpack_ids
from shared.sampling_params import SamplingParams
from shared.settings import Settings

CASES = [(0, 5), (0, 128), (0, 480), (16, 64), (64, 128), (64, 300), (128, 256), (200, 300)]


def _bring_to_decoding(llm, n, context, rng, vocab, tag, max_tokens=3000):
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    for i in range(n):
        llm.scheduler.add_request(f"{tag}{i}", 0, rng.integers(0, vocab, context).tolist(), params)
    while llm.scheduler.waiting or any(s.num_output_tokens == 0 for s in llm.scheduler.running):
        llm.step()


def check(llm, plan) -> dict:
    """Run plan's forward eagerly and in its graph on the same inputs, then execute it for real."""
    runner = llm.runner
    saved = {k: list(v) for k, v in runner.block_tables.items()}
    runner._apply_plan_state(plan)
    inputs = build_step_inputs(plan, runner.block_tables, runner.block_size)
    fill, ids = runner._pending_inputs(inputs)
    size = runner.mixed_graphs.size_for(inputs)
    eager = runner._run_eager(inputs, ids, fill).float().clone()
    graph = runner.mixed_graphs.run(inputs, ids, size, fill).float().clone()
    _, rows = inputs.sampled_rows()
    rows = torch.as_tensor(rows if rows is not None else np.arange(len(ids)), device=eager.device)
    same = (runner.model.compute_logits(eager[rows].to(runner.dtype)).argmax(-1)
            == runner.model.compute_logits(graph[rows].to(runner.dtype)).argmax(-1))
    agree = f"{int(same.sum())}/{same.numel()}"
    rel = ((eager - graph).abs().max() / eager.abs().max()).item()
    runner.block_tables = saved
    llm.scheduler.update(runner.execute(plan))
    return dict(tokens=len(ids), size=size, rel_diff=rel, argmax_agree=agree)


def time_case(llm, decodes, prefill, rng, vocab, graphs_on: bool, reps: int) -> float:
    runner, saved = llm.runner, llm.runner.mixed_graphs
    runner.mixed_graphs = saved if graphs_on else None
    times = []
    try:
        for r in range(reps):
            llm.scheduler.add_request(f"t{decodes}-{prefill}-{graphs_on}-{r}", 0,
                                      rng.integers(0, vocab, prefill).tolist(),
                                      SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True))
            plan = llm.scheduler.schedule()
            nt = unpack_ids(plan.num_tokens)
            assert nt.max() > 1 and len(nt) >= decodes, "the prompt did not join the decodes"
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            llm.scheduler.update(runner.execute(plan))
            times.append((time.perf_counter() - t0) * 1e3)
            llm.step()  # a decode step between (the prompt's sequence finishes)
    finally:
        runner.mixed_graphs = saved
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf-config", default="llama-3.1-8b")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--context", type=int, default=500)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    from engine.llm import LLM

    t0 = time.perf_counter()
    llm = LLM(Settings(load_format="dummy", hf_config=args.hf_config, dtype="bfloat16", device="cuda",
                       max_model_len=4096, max_num_seqs=256, cuda_graph_max_tokens=args.max_tokens))
    print(f"engine up in {time.perf_counter() - t0:.1f} s (graphs: {len(llm.runner.mixed_graphs.sizes)} mixed)",
          flush=True)
    rng = np.random.default_rng(0)
    vocab = llm.model_config.vocab_size
    # 1. correctness: a prefill alone, then prompts beside 40 decodes
    checks = []
    for n_new in (5, 77):
        llm.scheduler.add_request(f"c{n_new}", 0, rng.integers(0, vocab, n_new).tolist(),
                                  SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
        checks.append(check(llm, llm.scheduler.schedule()))
    while llm.scheduler.has_work():
        llm.step()
    _bring_to_decoding(llm, 40, 300, rng, vocab, "cd", max_tokens=6)
    for n_new in (100, 333):
        llm.scheduler.add_request(f"cm{n_new}", 0, rng.integers(0, vocab, n_new).tolist(),
                                  SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))
        checks.append(check(llm, llm.scheduler.schedule()))
    for c in checks:
        print("check", c, flush=True)
    while llm.scheduler.has_work():
        llm.step()
    # 2. timing
    rows, decoding = [], 0
    for decodes, prefill in CASES:
        if decodes > decoding:
            _bring_to_decoding(llm, decodes - decoding, args.context, rng, vocab, f"d{decoding}-")
            decoding = decodes
        eager = time_case(llm, decodes, prefill, rng, vocab, False, args.reps)
        graph = time_case(llm, decodes, prefill, rng, vocab, True, args.reps)
        rows.append((decodes, prefill, eager, graph))
        print(f"decodes {decodes} + prompt {prefill}: eager {eager:.2f} ms, graph {graph:.2f} ms", flush=True)
    print("\n| decodes | prompt tokens | eager step ms | graph step ms | eager / graph |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for d, p, e, g in rows:
        print(f"| {d} | {p} | {e:.2f} | {g:.2f} | {e / g:.2f} |")
    bad = [c for c in checks if c["rel_diff"] > 2e-2 or len(set(c["argmax_agree"].split("/"))) != 1]
    print("checks:", "all agree" if not bad else f"DISAGREE {bad}")


if __name__ == "__main__":
    main()
