"""The transformers baseline: `generate` on the same prompts, static batches, same GPU.

A static batch runs until its longest request is done (generate takes one max_new_tokens per batch),
so only each request's own `output_len` tokens count as useful output."""
from __future__ import annotations

import json
import time

from services.bench.stats import RequestRecord
from services.bench.workload import BenchRequest


def build_hf_model(hf_config: str, dtype: str, device: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.model_config import NAMED_SHAPES

    if hf_config in NAMED_SHAPES:
        raw = dict(NAMED_SHAPES[hf_config])
    else:
        with open(hf_config) as fh:
            raw = json.load(fh)
    arch = (raw.get("architectures") or ["LlamaForCausalLM"])[0]
    model_type = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
                  "Qwen3ForCausalLM": "qwen3"}[arch]
    cfg = AutoConfig.for_model(model_type, **{k: v for k, v in raw.items() if k not in ("architectures", "model_type")})
    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(
        dtype, torch.bfloat16 if device == "cuda" else torch.float32)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg).eval()  # random weights, like --load-format dummy
    finally:
        torch.set_default_dtype(old)
    return model


def run_hf_baseline(requests: list[BenchRequest], hf_config: str, dtype: str = "auto", device: str = "auto",
                    batch_size: int = 64, progress=None, on_batch=None) -> tuple[list[RequestRecord], float]:
    """Greedy generate over consecutive static batches (left-padded); returns (records, wall seconds).

    Every request's latency is its batch's end minus the run's start (all were waiting from time 0);
    on_batch(records so far, seconds so far) lets a caller save partial results of a long run."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_hf_model(hf_config, dtype, device)
    pad = 0
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    warm = torch.tensor([requests[0].prompt[:8]], device=device)
    model.generate(warm, attention_mask=torch.ones_like(warm), max_new_tokens=4, do_sample=False, pad_token_id=pad)
    sync()
    records: list[RequestRecord] = []
    t0 = time.perf_counter()
    for b in range(0, len(requests), batch_size):
        batch = requests[b:b + batch_size]
        width = max(len(r.prompt) for r in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(batch):
            ids[i, width - len(r.prompt):] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt):] = 1
        new = max(r.output_len for r in batch)
        model.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, pad_token_id=pad)
        sync()
        done = time.perf_counter() - t0
        for r in batch:
            records.append(RequestRecord(len(r.prompt), r.output_len, start=0.0, latency=done,
                                         output_tokens=r.output_len))
        if progress is not None:
            progress.update(len(batch))
        if on_batch is not None:
            on_batch(records, done)
    return records, time.perf_counter() - t0
