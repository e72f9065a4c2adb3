"""A GGUF file's dequantized weights kept as safetensors, so a later load skips parsing and dequantizing.

Parsing a GGUF (gguf.GGUFReader builds every metadata field, the whole vocabulary included) and dequantizing it in
numpy take most of a small model's start-up (about 30 s for the default model on 2 cores; the cached file loads in
about 1 s). The cache holds float32 tensors, 4 bytes a parameter, so it is off unless the gguf_weight_cache knob is
on: for small models and test suites, which start the same model many times.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator

import torch

from engine.model_config import cache_dir
from shared.knobs import Knobs

Weights = Iterator[tuple[str, torch.Tensor]]


def cached_gguf_weights(path: str, dequantize: Callable[[], Weights], knobs: Knobs) -> Weights:
    """The (name, tensor) pairs of `dequantize()`, from the cache when it holds them, else dequantized now and
    written for next time (atomically: ranks and servers starting together may race; the loser's copy is dropped)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    cache = cache_dir("gguf_weights", path, knobs) + ".safetensors"
    if os.path.exists(cache):
        with safe_open(cache, framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
        return
    tensors = dict(dequantize())
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        tmp = f"{cache}.tmp{os.getpid()}"
        save_file({n: t.contiguous() for n, t in tensors.items()}, tmp)
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only or full cache only costs the next load its time
    yield from tensors.items()
