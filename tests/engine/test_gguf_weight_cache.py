"""The dequantized-GGUF cache (engine/gguf_weight_cache.py): a miss dequantizes and writes, a hit reads the same
tensors back without dequantizing, and a changed file is a miss."""
import os

import torch

from engine.gguf_weight_cache import cached_gguf_weights
from shared.knobs import Knobs


def test_a_miss_fills_the_cache_and_a_hit_skips_dequantizing(tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"stand-in: the cache is keyed by the file's path, size and mtime")
    knobs = Knobs(cache_dir=str(tmp_path / "cache"), gguf_weight_cache=True)
    weights = {"model.embed_tokens.weight": torch.randn(7, 3), "model.norm.weight": torch.rand(3),
               "lm_head.weight": torch.randn(3, 7).t()}  # not contiguous, as a dequantized view can be
    calls = []

    def dequantize():
        calls.append(1)
        yield from weights.items()

    first = dict(cached_gguf_weights(str(model), dequantize, knobs))
    again = dict(cached_gguf_weights(str(model), dequantize, knobs))
    assert len(calls) == 1
    for got in (first, again):
        assert got.keys() == weights.keys()
        assert all(torch.equal(got[n], w) for n, w in weights.items())
    assert [f for f in os.listdir(tmp_path / "cache" / "gguf_weights")] and not any(
        ".tmp" in f for f in os.listdir(tmp_path / "cache" / "gguf_weights"))

    model.write_bytes(b"another model, another size")
    dict(cached_gguf_weights(str(model), dequantize, knobs))
    assert len(calls) == 2
