"""Qwen2 / Qwen2.5: the Llama layout with biased q, k and v projections (attention_bias in the config)."""
from __future__ import annotations

from engine.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    pass  # ModelConfig sets attention_bias=True for qwen2, which QKVParallelLinear honours
