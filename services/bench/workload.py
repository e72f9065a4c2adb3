"""Benchmark workloads as plain data: "sharegpt-synth" (ShareGPT-like lognormal prompt and output lengths, random
ids, a fixed seed) and fixed-shape requests."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAREGPT_SYNTH_SIZE = 1000  # the workload is defined over 1000 requests; fewer means its first N


@dataclass(slots=True)
class BenchRequest:
    prompt: list[int]  # token ids
    output_len: int  # max_tokens, with ignore_eos: exactly this many tokens come back


def sharegpt_synth(num_requests: int = SHAREGPT_SYNTH_SIZE, vocab_size: int = 128256,
                   prompt_seed: int = 0) -> list[BenchRequest]:
    """The same requests in every run, bit for bit: lengths of all 1000 requests first, then each prompt's
    random ids from the same generator, in order (so the first N requests of any run are the same).
    prompt_seed k > 0 keeps every length and draws other ids (from a generator of its own), so that runs on
    one server do not find each other's prompts in its prefix cache."""
    rng = np.random.default_rng(0)
    inp = np.clip(np.round(rng.lognormal(4.92, 1.0, SHAREGPT_SYNTH_SIZE)), 4, 1024).astype(np.int64)
    out = np.clip(np.round(rng.lognormal(4.70, 1.0, SHAREGPT_SYNTH_SIZE)), 4, 2048 - inp).astype(np.int64)
    if prompt_seed:
        rng = np.random.default_rng([0, prompt_seed])
    reqs = []
    for i in range(num_requests):
        if i == SHAREGPT_SYNTH_SIZE:
            raise ValueError(f"sharegpt-synth has {SHAREGPT_SYNTH_SIZE} requests")
        reqs.append(BenchRequest(rng.integers(0, vocab_size, int(inp[i])).tolist(), int(out[i])))
    return reqs


def fixed(num_requests: int, input_len: int, output_len: int, vocab_size: int, seed: int = 0) -> list[BenchRequest]:
    """num_requests prompts of input_len random ids, output_len tokens each (e.g. batch-1 decode: 1, 5, 256)."""
    rng = np.random.default_rng(seed)
    return [BenchRequest(rng.integers(0, vocab_size, input_len).tolist(), output_len) for _ in range(num_requests)]


def poisson_arrivals(num_requests: int, rate: float, seed: int = 0) -> list[float]:
    """Send times in seconds from the start: exponential gaps at `rate` requests/s; all at 0 for rate inf/0."""
    if not rate or rate == float("inf"):
        return [0.0] * num_requests
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, num_requests)
    gaps[0] = 0.0
    return np.cumsum(gaps).tolist()
