"""Qwen3: the Llama layout plus an RMSNorm over each query and key head before the rotary embedding."""
from __future__ import annotations

from engine.layers.norm import RMSNorm
from engine.model_config import ModelConfig
from engine.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM


class Qwen3Attention(LlamaAttention):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def qk_norm(self, q, k):
        T, d = q.shape[0], self.head_dim
        return self.q_norm(q.reshape(-1, d)).view(T, -1, d), self.k_norm(k.reshape(-1, d)).view(T, -1, d)


class Qwen3DecoderLayer(LlamaDecoderLayer):
    attention_cls = Qwen3Attention


class Qwen3ForCausalLM(LlamaForCausalLM):
    layer_cls = Qwen3DecoderLayer
