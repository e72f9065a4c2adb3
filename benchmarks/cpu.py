"""CPU throughput of the engine on the default model against transformers generate, in one run.

    python -m benchmarks.cpu [--tokens 64]

Prints decode tokens/s for transformers at batch 1, and for the engine at 1 and 16 concurrent sequences
(greedy, ignore_eos, the same chat prompt).
"""
from __future__ import annotations

import argparse
import time

import torch

from shared.sampling_params import SamplingParams
from shared.settings import Settings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    from engine.llm import LLM
    from fixtures.models import load_hf_default_model

    llm = LLM(Settings())
    prompt = llm.chat_prompt([{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}])
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    hf = load_hf_default_model()
    ids = torch.tensor([prompt])
    rows = []

    def timed(label, fn, n_tokens):
        fn()  # one warm-up call of the same shape
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        rows.append((label, n_tokens, dt, n_tokens / dt))

    timed("transformers generate, batch 1",
          lambda: hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.tokens,
                              min_new_tokens=args.tokens, do_sample=False, pad_token_id=2), args.tokens)
    timed("ferry engine, 1 sequence", lambda: llm.generate([prompt], params), args.tokens)
    timed("ferry engine, 16 sequences", lambda: llm.generate([prompt] * 16, params), 16 * args.tokens)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, prompt {len(prompt)} tokens")
    print(f"{'run':34} {'tokens':>7} {'seconds':>8} {'tokens/s':>9}")
    for label, n, dt, rate in rows:
        print(f"{label:34} {n:7d} {dt:8.2f} {rate:9.1f}")


if __name__ == "__main__":
    main()
