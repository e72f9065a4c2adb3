"""How one rank's memory divides: weights, other model buffers, the KV pool, and what is left for a step's
activations and the CUDA graphs.

`kv_pool_blocks` is the one rule that sizes the KV pool. The runner calls it with the free memory it measures
once its weights are loaded (engine.model_runner.ModelRunner._allocate_kv_cache); `ferry estimate`
(services/estimate.py) calls it, through `plan_rank`, with the free memory it predicts from config.json. So the
estimate and the real pool cannot drift apart. Everything here is arithmetic on a ModelConfig: no torch, no
weights, no GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.model_config import ModelConfig
from shared.settings import Settings

MiB, GiB = 2**20, 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
CUDA_RESERVE_BYTES = 512 * MiB  # kept free beyond (1 - gpu_memory_utilization): activations, graphs, sampler
# What the CUDA context and its libraries (cuBLAS, Triton, NCCL) take before the weights load: not torch's
# allocations, so torch.cuda.mem_get_info sees it as used. Measured about this much on H100/H200 with torch 2.x;
# only the estimate assumes it, the runner measures.
CUDA_CONTEXT_BYTES = 600 * MiB
ROTARY_TABLE_BYTES = 4  # each attention layer holds a float32 [max_model_len, head_dim] cos/sin table
KV_SCALE_BYTES = 8  # and its float32 k_scale and v_scale (engine.layers.attention.Attention)
# --quantization: none holds weights in --dtype (GGUF files are dequantized as they load); the others hold the
# linear layers' weights as engine/quant lays them out for the kernels (linear_weight_bytes).
QUANTIZATIONS = ("none", "awq", "gptq", "compressed-tensors", "fp8")
# --kv-cache-dtype, as vLLM names them: auto is the model's dtype; fp8 and fp8_e4m3 are one byte per element
# (float8_e4m3fn with per-layer scales, engine/layers/kv_quant.py), so twice the blocks in the same memory.
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3")


def kv_cache_dtype(settings: Settings) -> str:
    """'auto' or 'fp8_e4m3' (what fp8 means); any other --kv-cache-dtype is a ValueError naming the choices."""
    name = settings.kv_cache_dtype
    if name not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype {name!r} is not supported (one of {', '.join(KV_CACHE_DTYPES)})")
    return "auto" if name == "auto" else "fp8_e4m3"


def kv_dtype_bytes(settings: Settings, model_dtype_bytes: int) -> int:
    """Bytes of one cached K or V element: the model's dtype's, or 1 for fp8."""
    return model_dtype_bytes if kv_cache_dtype(settings) == "auto" else 1


def kv_bytes_per_block(num_layers: int, kv_heads: int, head_dim: int, block_size: int, dtype_bytes: int) -> int:
    """K and V of block_size tokens over every layer, for the KV heads one rank holds."""
    return 2 * num_layers * block_size * kv_heads * head_dim * dtype_bytes


def kv_pool_blocks(settings: Settings, bytes_per_block: int, device_type: str, free_bytes: int = 0,
                   total_bytes: int = 0) -> int:
    """How many KV blocks a rank allocates: --num-kv-blocks if set; on a GPU, the memory free once the weights
    are loaded less (1 - gpu_memory_utilization) of the GPU and CUDA_RESERVE_BYTES; on the CPU, kv_cache_bytes."""
    if settings.num_kv_blocks > 0:
        return settings.num_kv_blocks
    if device_type == "cuda":
        reserve = total_bytes * (1 - settings.gpu_memory_utilization) + CUDA_RESERVE_BYTES
        return int(max(0, free_bytes - reserve) // bytes_per_block)
    return settings.kv_cache_bytes // bytes_per_block


def dtype_name(settings: Settings, device_type: str) -> str:
    """--dtype auto is bf16 on a GPU and fp32 on the CPU (engine.model_runner.resolve_dtype)."""
    if settings.dtype == "auto":
        return "bfloat16" if device_type == "cuda" else "float32"
    if settings.dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {settings.dtype!r} (one of auto, {', '.join(DTYPE_BYTES)})")
    return settings.dtype


def rank_heads(cfg: ModelConfig, tp: int, rank: int) -> tuple[int, int]:
    """(query heads, KV heads) that rank holds: engine.parallel.head_shard, the split the layers use."""
    if tp == 1:
        return cfg.num_heads, cfg.num_kv_heads
    from engine.parallel import head_shard  # imports torch: only for tensor-parallel plans

    q0, q1, k0, k1 = head_shard(cfg.num_heads, cfg.num_kv_heads, rank, tp)
    return q1 - q0, k1 - k0


def rank_parameters(cfg: ModelConfig, tp: int = 1, rank: int = 0) -> int:
    """Parameters one rank holds, as engine/models and engine/layers shard them (tests check it against a real
    model's parameters): vocabulary-parallel embedding and LM head, column/row-parallel projections."""
    q, kv = rank_heads(cfg, tp, rank)
    h, d, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size // tp
    qkv_out = (q + 2 * kv) * d
    attention = qkv_out * h + (qkv_out if cfg.qkv_bias else 0) + q * d * h + (h if cfg.o_proj_bias else 0)
    norms = 2 * h + (2 * d if cfg.architecture == "qwen3" else 0)
    vocab_rows = -(-cfg.vocab_size // tp) * h  # padded so every rank's shard is equal
    per_layer = attention + 3 * h * inter + norms
    return cfg.num_layers * per_layer + vocab_rows * (1 if cfg.tie_word_embeddings else 2) + h


def rank_linear_shapes(cfg: ModelConfig, tp: int = 1, rank: int = 0) -> list[tuple[int, int]]:
    """One layer's projection weights on one rank, [N, K] each: qkv, o, gate_up, down."""
    q, kv = rank_heads(cfg, tp, rank)
    h, d, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size // tp
    return [((q + 2 * kv) * d, h), (h, q * d), (2 * inter, h), (h, inter)]


def linear_weight_bytes(cfg: ModelConfig, tp: int, rank: int, dtype_bytes: int) -> int:
    """The projection weights' bytes on one rank, in the layout engine/quant leaves them in for the kernels:
    W4A16 packs 8 codes per int32 plus a scale and a zero per group in the activation dtype (GPTQ act order
    adds its int64 gather order; padding for act-order groups split by tensor parallelism is not counted);
    FP8 holds one byte per weight and a float32 scale per output row."""
    scheme, total = cfg.quantization, 0
    for n, k in rank_linear_shapes(cfg, tp, rank):
        if scheme is None:
            total += n * k * dtype_bytes
        elif scheme.is_fp8:
            total += n * k + 4 * n + (4 if scheme.static_input_scale else 0)
        else:
            group = k if scheme.group_size == -1 else scheme.group_size
            total += n * k // 2 + 2 * n * -(-k // group) * dtype_bytes + (8 * k if scheme.desc_act else 0)
    return cfg.num_layers * total


def rank_weight_bytes(cfg: ModelConfig, tp: int, rank: int, dtype_bytes: int) -> int:
    """Every weight one rank holds: the projections as linear_weight_bytes says, the rest in --dtype."""
    linear = cfg.num_layers * sum(n * k for n, k in rank_linear_shapes(cfg, tp, rank))
    rest = rank_parameters(cfg, tp, rank) - linear
    return rest * dtype_bytes + linear_weight_bytes(cfg, tp, rank, dtype_bytes)


def parameter_count(cfg: ModelConfig) -> int:
    return rank_parameters(cfg, 1, 0)


def step_activation_bytes(cfg: ModelConfig, tokens: int, sampled_rows: int, tp: int, dtype_bytes: int) -> int:
    """Rough peak of one eager step of `tokens` tokens: one layer's intermediates (they are freed layer by layer)
    plus the float32 logits of the rows that sample and their softmax."""
    q, kv = rank_heads(cfg, tp, 0)
    h, d, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size // tp
    per_token = 3 * h + (q + 2 * kv) * d + q * d + 3 * inter
    return tokens * per_token * dtype_bytes + 2 * sampled_rows * cfg.vocab_size * 4


def graph_pool_bytes(cfg: ModelConfig, max_num_seqs: int, tp: int, dtype_bytes: int, mixed_max_tokens: int = 0) -> int:
    """The CUDA graphs' one memory pool (decode and mixed graphs share it): the largest step's intermediates
    (smaller graphs reuse them) plus every graph's output [rows, hidden] (engine.cuda_graphs.graph_batch_sizes,
    engine.mixed_graphs.mixed_token_sizes)."""
    from engine.cuda_graphs import graph_batch_sizes  # imports torch: the gateway's model facts never get here
    from engine.mixed_graphs import mixed_token_sizes

    rows = sum(graph_batch_sizes(max_num_seqs)) + sum(mixed_token_sizes(mixed_max_tokens))
    largest = max(max_num_seqs, mixed_max_tokens)
    return step_activation_bytes(cfg, largest, 0, tp, dtype_bytes) + rows * cfg.hidden_size * dtype_bytes


@dataclass(slots=True)
class RankPlan:
    """One rank's memory, in bytes (KV in blocks and tokens too)."""
    rank: int
    device: str
    dtype: str
    total: int  # the GPU's memory (0 on the CPU)
    parameters: int
    weights: int
    buffers: int  # rotary tables
    context: int  # the CUDA context (assumed)
    free_before_kv: int
    kv_bytes_per_token: int
    kv_bytes_per_block: int
    kv_blocks: int
    reserve: int  # what the runner leaves free after the KV pool (GPU)
    activations: int  # estimated peak of one step
    graph_pool: int  # estimated; 0 without CUDA graphs
    kv_dtype: str = "auto"  # engine.memory_plan.kv_cache_dtype: auto (the model's dtype) or fp8_e4m3

    @property
    def kv_bytes(self) -> int:
        return self.kv_blocks * self.kv_bytes_per_block


def plan_rank(cfg: ModelConfig, settings: Settings, device: str, total_bytes: int = 0, rank: int = 0) -> RankPlan:
    """The memory plan of one rank: what the runner will allocate for this model and these settings."""
    tp = settings.tensor_parallel_size
    dtype = dtype_name(settings, device)
    size = DTYPE_BYTES[dtype]
    q, kv = rank_heads(cfg, tp, rank)
    params = rank_parameters(cfg, tp, rank)
    weights = rank_weight_bytes(cfg, tp, rank, size)
    buffers = cfg.num_layers * (cfg.max_model_len * cfg.head_dim * ROTARY_TABLE_BYTES + KV_SCALE_BYTES)
    per_block = kv_bytes_per_block(cfg.num_layers, kv, cfg.head_dim, settings.block_size,
                                   kv_dtype_bytes(settings, size))
    gpu = device == "cuda"
    context = CUDA_CONTEXT_BYTES if gpu else 0
    free = max(0, total_bytes - context - weights - buffers) if gpu else 0
    blocks = kv_pool_blocks(settings, per_block, device, free, total_bytes)
    reserve = int(total_bytes * (1 - settings.gpu_memory_utilization) + CUDA_RESERVE_BYTES) if gpu else 0
    sampled = min(settings.max_num_seqs, settings.max_num_batched_tokens)
    activations = step_activation_bytes(cfg, settings.max_num_batched_tokens, sampled, tp, size)
    graphs = (graph_pool_bytes(cfg, settings.max_num_seqs, tp, size, settings.cuda_graph_max_tokens)
              if gpu and not settings.enforce_eager else 0)
    return RankPlan(rank, device, dtype, total_bytes, params, weights, buffers, context, free,
                    per_block // settings.block_size, per_block, blocks, reserve, activations, graphs,
                    kv_cache_dtype(settings))
