"""Fill a model's parameters from safetensors, a GGUF file (dequantized), or random values ("dummy").

Every source yields (checkpoint name, full tensor) pairs with Hugging Face names; each parameter's
weight_loader keeps this rank's shard, so the whole model never sits on one rank.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from engine.gguf_weight_cache import cached_gguf_weights
from engine.layers.kv_quant import kv_scale_buffer_name
from engine.model_config import ModelConfig
from shared.knobs import Knobs, read_knobs

GGUF_NAMES = {
    "token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def safetensors_weights(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as fh:
            files = sorted(set(json.load(fh)["weight_map"].values()))
        files = [os.path.join(path, f) for f in files]
    else:
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {path}")
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    # llama.cpp interleaves each head's rotary halves for Llama q/k; undo it to get the HF layout.
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_weights(path: str, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    for t in GGUFReader(path).tensors:
        parts = t.name.split(".")
        if parts[0] == "blk":
            name = f"model.layers.{parts[1]}.{GGUF_NAMES[parts[2]]}.{parts[3]}"
            base = parts[2]
        else:
            name, base = f"{GGUF_NAMES[parts[0]]}.{parts[1]}", parts[0]
        w = dequantize(t.data, t.tensor_type).reshape(tuple(reversed([int(x) for x in t.shape])))
        if cfg.architecture == "llama" and base in ("attn_q", "attn_k"):
            w = _unpermute_rope(w, cfg.num_heads if base == "attn_q" else cfg.num_kv_heads)
        yield name, torch.from_numpy(np.array(w, dtype=np.float32))  # a writable copy


def load_weights(model: nn.Module, cfg: ModelConfig, show_progress: bool = True, knobs: Knobs | None = None) -> None:
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers())
    if cfg.load_format == "dummy":
        _fill_dummy(model)
        _finish_quantized(model, cfg)
        return
    if cfg.load_format == "gguf":
        knobs = knobs or read_knobs()
        if knobs.gguf_weight_cache:  # dequantized once, then read back (engine/gguf_weight_cache.py)
            source, total = cached_gguf_weights(cfg.path, lambda: gguf_weights(cfg.path, cfg), knobs), None
        else:
            source, total = gguf_weights(cfg.path, cfg), None
    elif cfg.load_format == "safetensors":
        source, total = safetensors_weights(cfg.path), None
    else:
        raise ValueError(f"unknown load format {cfg.load_format!r}")
    loaded = set()
    for name, tensor in tqdm(source, desc="Loading weights", unit="tensor", total=total, disable=not show_progress):
        if "rotary_emb.inv_freq" in name:
            continue
        if cfg.tie_word_embeddings and name == "lm_head.weight":
            continue  # tied: the embedding is the LM head
        kv_scale = kv_scale_buffer_name(name)
        if kv_scale is not None:  # calibrated K/V scales: what an fp8 KV cache divides by (engine/layers/kv_quant.py)
            if kv_scale not in buffers or tensor.numel() != 1:
                raise KeyError(f"checkpoint tensor {name} {tuple(tensor.shape)} is not a KV scale of this model")
            buffers[kv_scale].copy_(tensor.reshape(()).float())
            continue
        target, shard = name, None
        for ckpt, (ours, shard_id) in model.packed_modules.items():
            if f".{ckpt}." in name:
                target, shard = name.replace(f".{ckpt}.", f".{ours}."), shard_id
                break
        param = params.get(target)
        if param is None:
            raise KeyError(f"checkpoint tensor {name} has no place in {type(model).__name__}")
        loader = getattr(param, "weight_loader", None)
        if not getattr(param, "raw_checkpoint_tensor", False):  # quantized tensors check their own dtype
            tensor = tensor.to(param.dtype)
        if loader is None:
            param.data.copy_(tensor)
        elif shard is None:
            loader(param, tensor)
        else:
            loader(param, tensor, shard)
        loaded.add(target)
    missing = {n for n in params if n not in loaded and not (cfg.tie_word_embeddings and n == "lm_head.weight")}
    if missing:
        raise KeyError(f"checkpoint lacks {sorted(missing)[:5]}{'...' if len(missing) > 5 else ''}")
    _finish_quantized(model, cfg)  # every tensor is in: the quantized layers take their kernels' layout


def _finish_quantized(model: nn.Module, cfg: ModelConfig) -> None:
    """Imported only for a quantized model: the kernels (triton) are a test dependency, and a 16-bit model on the
    CPU needs none of them."""
    if cfg.quantization is not None:
        from engine.quant.convert import finish_quantized_layers

        finish_quantized_layers(model)


@torch.no_grad()
def _fill_dummy(model: nn.Module) -> None:
    """Random weights of the right shapes, small enough that activations stay finite in bf16."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    for module in model.modules():
        if getattr(module, "quant_method", None) is not None:
            module.quant_method.fill_dummy(module)
    for name, p in model.named_parameters():
        if getattr(p, "quantized", False):
            continue
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif p.device.type == "cpu":
            p.uniform_(-0.02, 0.02, generator=gen)
        else:
            p.uniform_(-0.02, 0.02)
