"""The Llama family (Llama 2/3/3.1, Mistral-style configs, SmolLM2, TinyLlama, Qwen2/2.5), tensor-parallel ready."""
from __future__ import annotations

import torch
from torch import nn

from engine.layers.activation import SiluAndMul
from engine.layers.attention import Attention
from engine.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from engine.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from engine.layers.norm import RMSNorm
from engine.layers.rotary import RotaryEmbedding
from engine.model_config import ModelConfig


def fp8_activations(cfg: ModelConfig) -> bool:
    """The projections are FP8 with per-token activation scales: the norms and SiLU-and-mul before them quantize."""
    return cfg.quantization is not None and cfg.quantization.dynamic_fp8_activations


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.head_dim
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, d, cfg.num_heads, cfg.num_kv_heads, bias=cfg.qkv_bias,
                                          quant=cfg.quantization)
        self.num_heads, self.num_kv_heads, self.head_dim = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads, d
        q0, q1 = self.qkv_proj.q_heads
        self.o_proj = RowParallelLinear(cfg.num_heads * d, cfg.hidden_size, bias=cfg.o_proj_bias,
                                        input_range=(q0 * d, q1 * d), reduce_results=False,
                                        quant=cfg.quantization)
        self.rotary = RotaryEmbedding(d, cfg.max_model_len, cfg.rope_theta, cfg.rope_scaling)
        self.attn = Attention(self.num_heads, self.num_kv_heads, d, d ** -0.5)

    def qk_norm(self, q: torch.Tensor, k: torch.Tensor):
        return q, k  # Qwen3 normalizes each head here

    def forward(self, positions: torch.Tensor, x) -> torch.Tensor:
        """x [T, hidden], or the same as a kernels.fp8_linear.Fp8Activation."""
        T, d = positions.shape[0], self.head_dim
        q, k, v = self.qkv_proj(x).split([self.num_heads * d, self.num_kv_heads * d, self.num_kv_heads * d], dim=-1)
        # Views of the qkv output, no copies: the kernels take strides.
        q, k = self.qk_norm(q.reshape(T, self.num_heads, d), k.reshape(T, self.num_kv_heads, d))
        out = self.attn(positions, q, k, v.reshape(T, self.num_kv_heads, d), self.rotary)
        return self.o_proj(out.reshape(T, self.num_heads * d))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(cfg.hidden_size, [cfg.intermediate_size] * 2,
                                                       quant=cfg.quantization)
        self.down_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, reduce_results=False,
                                           quant=cfg.quantization)
        self.act = SiluAndMul(fp8_out=fp8_activations(cfg), width=self.down_proj.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    attention_cls = LlamaAttention

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = self.attention_cls(cfg)
        self.mlp = LlamaMLP(cfg)
        fp8 = fp8_activations(cfg)  # the norms' outputs feed FP8 projections only
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, fp8_out=fp8)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, fp8_out=fp8)

    def forward(self, positions, x, residual):
        # The embedding, o_proj and down_proj return each rank's partial sum: the norm after each sums it over
        # the group and adds the residual (one kernel on GPUs, see engine.parallel.PeerAllReduceRMSNorm). The
        # first layer has no residual yet: its norm returns the summed embedding as the residual.
        x, residual = self.input_layernorm(x, residual, reduce=True)
        x = self.self_attn(positions, x)
        x, residual = self.post_attention_layernorm(x, residual, reduce=True)
        return self.mlp(x), residual  # partial sums: the next layer's norm (or the final one) reduces


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_cls):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, reduce_results=False)
        self.layers = nn.ModuleList([layer_cls(cfg) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            x, residual = layer(positions, x, residual)
        return self.norm(x, residual, reduce=True)[0]


class LlamaForCausalLM(nn.Module):
    layer_cls = LlamaDecoderLayer
    # checkpoint name -> (our parameter, shard of it)
    packed_modules = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
                      "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg, self.layer_cls)
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
