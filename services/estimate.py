"""`ferry estimate`: how a model would use a GPU's memory under given settings, before choosing a GPU.

    ferry estimate --model DIR|FILE.gguf|NAME [--max-model-len N] [--tensor-parallel-size N] [--dtype D]
                   [--quantization none|awq|gptq|compressed-tensors|fp8] [--kv-cache-dtype auto|fp8]
                   [--max-num-seqs N] [--gpu-memory GiB] [--json] [any serve setting]

Only the model's shape is read (config.json, or a GGUF file's metadata): no weights, no GPU. A quantized
checkpoint's quantization_config (or --quantization, as `ferry serve` takes it) sizes its linear weights. The KV
pool is sized by engine.memory_plan.kv_pool_blocks, the rule the runner itself uses, from the free memory predicted
here. Exit status 0 when it fits, 1 when it does not, 2 for a bad argument.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from engine.memory_plan import QUANTIZATIONS, GiB, RankPlan, plan_rank
from engine.model_config import ModelConfig, load_model_config
from shared.settings import Settings, load_settings


@dataclasses.dataclass(slots=True)
class Estimate:
    model: str
    max_model_len: int
    tensor_parallel_size: int
    max_num_seqs: int
    block_size: int
    ranks: list[RankPlan]
    fits: bool
    verdict: list[str]
    quantization: str = "none"  # the scheme the linear weights are held in (engine.quant.scheme.QuantScheme)

    @property
    def smallest(self) -> RankPlan:
        """The rank with the fewest KV blocks: the scheduler's pool is the smallest rank's."""
        return min(self.ranks, key=lambda r: r.kv_blocks)


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def judge(cfg: ModelConfig, s: Settings, plans: list[RankPlan]) -> tuple[bool, list[str]]:
    p = min(plans, key=lambda r: r.kv_blocks)
    gpu = p.device == "cuda"
    if gpu and p.context + p.weights + p.buffers > p.total:
        return False, [f"does not fit: the weights and buffers need {_gib(p.context + p.weights + p.buffers)} per GPU "
                       f"(CUDA context included), the GPU has {_gib(p.total)}; add GPUs (--tensor-parallel-size)"]
    if p.kv_blocks < 1:
        return False, [f"does not fit: nothing is left for the KV cache ({_gib(p.free_before_kv)} free after the "
                       f"weights, {_gib(p.reserve)} kept in reserve); raise --gpu-memory-utilization or add GPUs"]
    pool_tokens = p.kv_blocks * s.block_size
    per_seq = -(-cfg.max_model_len // s.block_size)
    full = p.kv_blocks // per_seq
    lines = []
    if full < 1:
        lines.append(f"fits, but the KV pool holds {pool_tokens} tokens, less than one {cfg.max_model_len}-token "
                     f"sequence: longer requests are rejected (lower --max-model-len to {pool_tokens} or below)")
    elif full >= s.max_num_seqs:
        lines.append(f"fits: all {s.max_num_seqs} sequences (--max-num-seqs) at the full {cfg.max_model_len} "
                     f"tokens at once ({pool_tokens} KV tokens)")
    else:
        lines.append(f"fits: {full} sequences of {cfg.max_model_len} tokens at once, or {s.max_num_seqs} sequences of "
                     f"{pool_tokens // s.max_num_seqs} tokens on average ({pool_tokens} KV tokens); beyond that the "
                     "scheduler queues or preempts")
    if gpu and p.activations + p.graph_pool > p.reserve:
        lines.append(f"warning: a step's activations and the CUDA graphs (about {_gib(p.activations + p.graph_pool)}) "
                     f"may exceed the {_gib(p.reserve)} left free; lower --gpu-memory-utilization or "
                     "--max-num-batched-tokens")
    return True, lines


def estimate(settings: Settings, device: str, total_bytes: int = 0, cfg: ModelConfig | None = None) -> Estimate:
    cfg = cfg or load_model_config(settings)
    tp = settings.tensor_parallel_size
    plans = [plan_rank(cfg, settings, device, total_bytes, rank) for rank in range(tp)]
    fits, verdict = judge(cfg, settings, plans)
    name = settings.hf_config if settings.load_format == "dummy" and settings.hf_config else settings.resolved_name()
    return Estimate(name, cfg.max_model_len, tp, settings.max_num_seqs, settings.block_size,
                    plans, fits, verdict, cfg.quantization.describe() if cfg.quantization else "none")


def render(e: Estimate) -> str:
    p = e.smallest
    rows = [("model", e.model), ("device", f"{p.device} x {e.tensor_parallel_size}, {p.dtype}"),
            ("quantization", e.quantization), ("max model length", f"{e.max_model_len} tokens"),
            ("max sequences", str(e.max_num_seqs))]
    if p.device == "cuda":
        rows.append(("GPU memory", _gib(p.total)))
    per = "per GPU" if p.device == "cuda" else "on the CPU"
    rows += [(f"weights {per}", f"{_gib(p.weights)} ({p.parameters / 1e9:.3f} B parameters)"),
             ("rotary tables, KV scales", _gib(p.buffers))]
    if p.device == "cuda":
        rows += [("CUDA context (assumed)", _gib(p.context)), ("free before the KV pool", _gib(p.free_before_kv)),
                 ("kept free (reserve)", _gib(p.reserve))]
    per_seq = p.kv_bytes_per_token * e.max_model_len
    kv_dtype = f"auto ({p.dtype})" if p.kv_dtype == "auto" else f"{p.kv_dtype} (1 byte, per-layer scales)"
    rows += [("KV cache dtype", kv_dtype), ("KV cache per token", f"{p.kv_bytes_per_token / 1024:.1f} KiB"),
             ("KV for one full sequence", _gib(per_seq)),
             (f"KV for {e.max_num_seqs} full sequences", _gib(per_seq * e.max_num_seqs)),
             ("KV pool", f"{_gib(p.kv_bytes)}: {p.kv_blocks} blocks of {e.block_size} tokens"),
             ("activation peak (est.)", _gib(p.activations))]
    if p.device == "cuda":
        rows.append(("CUDA graph pool (est.)", _gib(p.graph_pool)))
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"{k:<{width}}  {v}" for k, v in rows] + [""] + e.verdict)


def _gpu_total(gib: float | None) -> int:
    if gib is not None:
        if gib <= 0:
            raise SystemExit("ferry estimate: --gpu-memory must be positive (GiB)")
        return int(gib * GiB)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("ferry estimate: no GPU here: give --gpu-memory GiB (or --device cpu for the CPU pool)")
    return torch.cuda.mem_get_info()[1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ferry estimate", add_help=False)
    parser.add_argument("--gpu-memory", type=float, default=None, help="one GPU's memory in GiB")
    parser.add_argument("--quantization", default="none")
    parser.add_argument("--json", action="store_true")
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    own, rest = parser.parse_known_args(argv)
    if own.quantization not in QUANTIZATIONS:
        print(f"ferry estimate: quantization {own.quantization!r} is not supported (one of {', '.join(QUANTIZATIONS)})",
              file=sys.stderr)
        return 2
    if own.quantization != "none":
        rest = [*rest, "--quantization", own.quantization]
    try:
        settings = load_settings(rest)
        device = settings.device if settings.device != "auto" else "cuda"  # a GPU estimate unless --device cpu
        result = estimate(settings, device, _gpu_total(own.gpu_memory) if device == "cuda" else 0)
    except (OSError, ValueError, KeyError) as e:
        print(f"ferry estimate: {e}", file=sys.stderr)
        return 2
    if own.json:
        print(json.dumps(dataclasses.asdict(result)))
    else:
        print(render(result))
    return 0 if result.fits else 1
