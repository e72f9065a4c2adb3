"""Rotary position embedding (neox layout: the head's first half rotates with its second half)."""
from __future__ import annotations

import math

import torch
from torch import nn


def inverse_frequencies(head_dim: int, base: float, scaling: dict | None) -> torch.Tensor:
    """fp32, written as transformers writes it (default, linear and llama3 rope types) so the rounding matches."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / scaling["factor"]
    if rope_type != "llama3":
        raise NotImplementedError(f"rope scaling {rope_type!r} is not supported")
    # Llama 3.1: stretch low frequencies by `factor`, keep high ones, blend in between.
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_len = scaling.get("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


def build_cos_sin_cache(head_dim: int, max_positions: int, base: float, scaling: dict | None = None,
                        device=None) -> torch.Tensor:
    """[max_positions, head_dim] float32: cos of each frequency in the first half, sin in the second. The one
    table both the torch path and the Triton kernel (kernels/rotary.py) read; triton-free, for CPU installs."""
    inv_freq = inverse_frequencies(head_dim, base, scaling)
    freqs = torch.arange(max_positions, dtype=torch.int64).float()[:, None] * inv_freq[None, :]  # as transformers
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).contiguous().to(device)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_positions: int, base: float, scaling: dict | None):
        super().__init__()
        self.register_buffer("cos_sin_cache", build_cos_sin_cache(head_dim, max_positions, base, scaling),
                             persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """q [T, Hq, D], k [T, Hkv, D]; returns rotated copies. On CUDA the attention layer applies the table in
        one kernel with the KV-cache write instead (kernels.rotary_store_kv)."""
        cos, sin = self.cos_sin_cache[positions].unsqueeze(1).to(q.dtype).chunk(2, dim=-1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)
