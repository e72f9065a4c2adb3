"""Owns one rank's model weights and KV cache, and executes StepPlans.

The runner keeps, per sequence, its block table and its sampling state; each plan only carries what
changed. Every rank of a tensor-parallel group executes every plan; rank 0 samples and answers.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from shared.codec import pack_ids, unpack_ids
from shared.messages import StepPlan, StepResult
from shared.settings import Settings

from engine.layers.attention import AttentionMetadata, Attention, set_attention_metadata, torch_backend_indices
from engine.loader import load_weights
from engine.model_config import ModelConfig, load_model_config
from engine.models import MODELS
from engine.parallel import init_tensor_parallel
from engine.sampler import Sampler, SamplingState

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(settings: Settings, rank: int = 0) -> torch.device:
    """Rank r of a tensor-parallel group uses GPU r."""
    kind = settings.device if settings.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(kind, rank) if kind == "cuda" else torch.device(kind)


def resolve_dtype(settings: Settings, device: torch.device) -> torch.dtype:
    if settings.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[settings.dtype]


class ModelRunner:
    def __init__(self, settings: Settings, rank: int = 0, model_config: ModelConfig | None = None,
                 show_progress: bool = True):
        self.settings = settings
        self.rank = rank
        self.model_config = cfg = model_config or load_model_config(settings)
        self.device = resolve_device(settings, rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        init_tensor_parallel(settings.tensor_parallel_size, rank, self.device)
        self.dtype = resolve_dtype(settings, self.device)
        self.block_size = settings.block_size
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                self.model = MODELS[cfg.architecture](cfg)
        finally:
            torch.set_default_dtype(default_dtype)
        load_weights(self.model, cfg, show_progress=show_progress and rank == 0)
        self.model.eval()
        self.num_kv_blocks = self._allocate_kv_cache()
        self.sampler = Sampler(self.device, settings.seed)
        self.block_tables: dict[int, list[int]] = {}
        self.states: dict[int, SamplingState] = {}
        self.graphs = self._capture_cuda_graphs()

    def _capture_cuda_graphs(self):
        # With tensor parallelism the graphs hold the layers' NCCL all-reduces: every rank captures the
        # same ladder in the same order (CudaGraphRunner), so the collectives pair up at capture and replay.
        if self.device.type != "cuda" or self.settings.enforce_eager:
            return None
        from engine.cuda_graphs import CudaGraphRunner

        return CudaGraphRunner(self.model, self.settings.max_num_seqs, self.model_config.max_model_len,
                               self.block_size, self.device)

    def _allocate_kv_cache(self) -> int:
        cfg, s = self.model_config, self.settings
        layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        kv_heads = layers[0].num_kv_heads
        bytes_per_block = 2 * len(layers) * s.block_size * kv_heads * cfg.head_dim * self.dtype.itemsize
        if s.num_kv_blocks > 0:
            num_blocks = s.num_kv_blocks
        elif self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            reserve = total * (1 - s.gpu_memory_utilization) + 512 * 2**20  # activations, graphs, sampler
            num_blocks = int(max(0, free - reserve) // bytes_per_block)
        else:
            num_blocks = s.kv_cache_bytes // bytes_per_block
        # enough for one max_model_len sequence, else requests would be rejected needlessly
        if num_blocks < 1:
            raise RuntimeError("no memory left for the KV cache")
        cache = torch.zeros(2, len(layers), num_blocks, s.block_size, kv_heads, cfg.head_dim, dtype=self.dtype,
                            device=self.device)
        for i, layer in enumerate(layers):
            layer.k_cache, layer.v_cache = cache[0, i], cache[1, i]
        self.kv_cache = cache
        log.info("KV cache: %d blocks of %d tokens (%.1f MiB)", num_blocks, s.block_size,
                 cache.numel() * cache.element_size() / 2**20)
        return num_blocks

    # ------------------------------------------------------------------ one step

    def _apply_plan_state(self, plan: StepPlan) -> None:
        for ns in plan.new_seqs:
            self.block_tables[ns.seq_id] = []
            self.states[ns.seq_id] = SamplingState.create(ns.seq_id, ns.params, unpack_ids(ns.prompt_token_ids).tolist(),
                                                          unpack_ids(ns.eos_token_ids).tolist(), self.device)
        for sid in unpack_ids(plan.finished_seq_ids).tolist():
            self.block_tables.pop(sid, None)
            self.states.pop(sid, None)

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> StepResult | None:
        self._apply_plan_state(plan)
        seq_ids = unpack_ids(plan.seq_ids)
        if len(seq_ids) == 0:
            return StepResult(plan.step_id, b"", b"") if self.rank == 0 else None
        num_tokens = unpack_ids(plan.num_tokens)
        starts = unpack_ids(plan.start_positions)
        kept, num_new_blocks = unpack_ids(plan.blocks_kept), unpack_ids(plan.num_new_blocks)
        new_blocks = unpack_ids(plan.new_block_ids).tolist()
        tables, offset = [], 0
        for sid, k, n in zip(seq_ids.tolist(), kept.tolist(), num_new_blocks.tolist()):
            table = self.block_tables[sid]
            del table[k:]
            table.extend(new_blocks[offset:offset + n])
            offset += n
            tables.append(table)

        context_lens = starts + num_tokens
        cu = np.zeros(len(seq_ids) + 1, dtype=np.int32)
        np.cumsum(num_tokens, out=cu[1:])
        seq_of_token = np.repeat(np.arange(len(seq_ids)), num_tokens)
        positions = starts[seq_of_token] + (np.arange(cu[-1]) - cu[:-1][seq_of_token])
        max_blocks = max(len(t) for t in tables)
        block_tables = np.zeros((len(tables), max_blocks), dtype=np.int32)
        for i, t in enumerate(tables):
            block_tables[i, :len(t)] = t
        slots = block_tables[seq_of_token, positions // self.block_size].astype(np.int64) * self.block_size \
            + positions % self.block_size

        dev = self.device
        if self.graphs is not None and self.graphs.can_run(num_tokens, max_blocks):
            hidden = self.graphs.run(unpack_ids(plan.token_ids), positions, slots, context_lens, block_tables)
        else:
            meta = AttentionMetadata(
                slot_mapping=torch.from_numpy(slots).to(dev), block_tables=torch.from_numpy(block_tables).to(dev),
                context_lens=torch.from_numpy(context_lens.astype(np.int32)).to(dev),
                cu_seqlens_q=torch.from_numpy(cu).to(dev), max_query_len=int(num_tokens.max()),
                max_context_len=int(context_lens.max()))
            if dev.type != "cuda":
                for k, v in torch_backend_indices(num_tokens.tolist(), context_lens.tolist(), tables,
                                                  self.block_size, dev).items():
                    setattr(meta, k, v)
            input_ids = torch.from_numpy(unpack_ids(plan.token_ids).astype(np.int64)).to(dev)
            set_attention_metadata(meta)
            try:
                hidden = self.model(input_ids, torch.from_numpy(positions.astype(np.int64)).to(dev))
            finally:
                set_attention_metadata(None)

        sample_mask = np.frombuffer(plan.sample_mask, dtype=np.uint8).astype(bool)
        if hidden.shape[0] != int(sample_mask.sum()):  # some rows are prompt chunks or not last tokens
            hidden = hidden[torch.from_numpy((cu[1:] - 1)[sample_mask].astype(np.int64)).to(dev)]
        logits = self.model.compute_logits(hidden)  # every rank joins the vocab all-gather
        if self.rank != 0:
            return None
        sampled_ids = seq_ids[sample_mask].tolist()
        tokens, logprobs = self.sampler(logits, [self.states[sid] for sid in sampled_ids])
        return StepResult(plan.step_id, pack_ids(sampled_ids), pack_ids(tokens), logprobs)
