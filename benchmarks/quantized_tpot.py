"""Issue 18, must-hold 2 (ferry's side): batch-1 TPOT of the Llama-3.1-8B shape with dummy weights, bf16
against each quantized scheme, in one run on one GPU; prints a table with the speed-ups.

    python3 -m benchmarks.quantized_tpot [--hf-config llama-3.1-8b] [--schemes none,fp8,awq,gptq,compressed-tensors]

Each scheme loads in turn (dummy weights fill the quantized tensors directly), runs a 128-token prompt and
then 256 greedy tokens; TPOT is the decode time over the tokens after the first. Throughput at 1000 requests
is benchmarks.engine_only with --quantization."""
from __future__ import annotations

import argparse
import gc
import json
import time


def tpot_ms(settings, prompt_len: int = 128, tokens: int = 256) -> tuple[float, float]:
    import torch

    from engine.llm import LLM
    from shared.sampling_params import SamplingParams

    llm = LLM(settings)
    prompt = [(7 * i) % 1000 + 10 for i in range(prompt_len)]
    llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))  # warm
    times = []
    for n in (1, tokens + 1):
        torch.cuda.synchronize()
        t = time.perf_counter()
        llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True))
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    weights_gib = torch.cuda.memory_allocated() / 2**30
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    return 1e3 * (times[1] - times[0]) / tokens, weights_gib


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf-config", default="llama-3.1-8b")
    ap.add_argument("--schemes", default="none,fp8,awq,gptq,compressed-tensors")
    args = ap.parse_args()
    from shared.settings import Settings

    rows = []
    for scheme in args.schemes.split(","):
        settings = Settings(load_format="dummy", hf_config=args.hf_config, dtype="bfloat16", device="cuda",
                            max_model_len=4096, max_num_seqs=64, quantization="" if scheme == "none" else scheme)
        ms, gib = tpot_ms(settings)
        rows.append((scheme, ms, gib))
        print(json.dumps({"scheme": scheme, "tpot_ms": ms, "allocated_gib": gib}), flush=True)
    base = rows[0][1]
    print(f"{'scheme':<20} {'TPOT ms':>8} {'vs ' + rows[0][0]:>8} {'GiB':>6}")
    for scheme, ms, gib in rows:
        print(f"{scheme:<20} {ms:8.2f} {base / ms:7.2f}x {gib:6.1f}")


if __name__ == "__main__":
    main()
