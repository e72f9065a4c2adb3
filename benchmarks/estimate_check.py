"""`ferry estimate` against a real ModelRunner's KV pool on this GPU (issue 19, must-hold 4): one line out.

    python -m benchmarks.estimate_check [--hf-config llama-3.1-8b] [--max-model-len 4096] [--max-num-seqs 256]
    python -m benchmarks.estimate_check --device cpu --tiny      # a dry run of this script on the CPU

The estimate is computed first, from the model's shape and this GPU's total memory only (as `ferry estimate
--gpu-memory` would be); then a runner with dummy weights allocates its pool, and the two block counts must agree
within 5%. The real weight bytes and the memory left free once the CUDA graphs are captured are printed beside
the estimate's weights and its activation + graph-pool figure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch

from engine.memory_plan import GiB
from services.estimate import estimate
from shared.settings import Settings

TOLERANCE = 0.05


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf-config", default="llama-3.1-8b")
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama shape instead (CPU dry runs)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--kv-cache-bytes", type=int, default=64 * 2**20, help="the pool's size on the CPU")
    ap.add_argument("--quantization", default="", help="awq | gptq | compressed-tensors | fp8 (issue 18)")
    args = ap.parse_args(argv)
    shape = args.hf_config
    if args.tiny:
        from fixtures.models import TINY_CONFIGS

        shape = os.path.join(tempfile.mkdtemp(), "config.json")
        with open(shape, "w") as fh:
            json.dump(TINY_CONFIGS["llama"]().to_dict(), fh)
    settings = Settings(load_format="dummy", hf_config=shape, device=args.device, max_model_len=args.max_model_len,
                        max_num_seqs=args.max_num_seqs, kv_cache_bytes=args.kv_cache_bytes,
                        quantization=args.quantization)
    total = torch.cuda.mem_get_info()[1] if args.device == "cuda" else 0
    est = estimate(settings, args.device, total)
    plan = est.smallest

    from engine.model_runner import ModelRunner

    runner = ModelRunner(settings, show_progress=False)
    weights = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    # quantized layers hold their weights as buffers (engine/quant/convert.py); the rotary tables are buffers too
    weights += sum(b.numel() * b.element_size() for n, b in runner.model.named_buffers() if "cos_sin" not in n)
    left = torch.cuda.mem_get_info()[0] if args.device == "cuda" else 0
    diff = (plan.kv_blocks - runner.num_kv_blocks) / max(1, runner.num_kv_blocks)
    ok = abs(diff) <= TOLERANCE
    name = "tiny-llama" if args.tiny else args.hf_config
    print(f"estimate_check {name} {args.device} max_model_len={args.max_model_len} max_num_seqs={args.max_num_seqs}: "
          f"KV blocks estimate {plan.kv_blocks} runner {runner.num_kv_blocks} ({100 * diff:+.2f}%); weights "
          f"estimate {plan.weights / GiB:.3f} real {weights / GiB:.3f} GiB; free after graphs {left / GiB:.2f} GiB, "
          f"estimated activations+graphs {(plan.activations + plan.graph_pool) / GiB:.2f} GiB of "
          f"{plan.reserve / GiB:.2f} reserved: {'OK' if ok else 'FAIL'} (within {100 * TOLERANCE:.0f}%)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
