"""Owns one rank's model weights and KV cache, and executes StepPlans.

The runner keeps, per sequence, its block table and its sampling state; each plan only carries what
changed. Every rank of a tensor-parallel group executes every plan and samples (identical logits and
seeds give identical tokens, which each rank needs as its next inputs); rank 0 answers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from engine.gpu_idle import GpuIdleMeter
from engine.layers.attention import Attention, AttentionMetadata, attention_context, torch_backend_indices
from engine.layers.kv_quant import kv_cache_torch_dtype
from engine.loader import load_weights
from engine.memory_plan import kv_bytes_per_block, kv_pool_blocks
from engine.model_config import ModelConfig, load_model_config
from engine.models import MODELS
from engine.parallel import enable_peer_all_reduce, init_tensor_parallel
from engine.prompt_logprobs import prompt_targets, score_prompt_rows
from engine.sampler import Sampler, SamplingState
from engine.step_inputs import StepInputs, build_step_inputs
from engine.structured.decoding import GrammarDecoding
from engine.transfer import to_device
from shared.codec import pack_ids, unpack_ids
from shared.knobs import Knobs, read_knobs
from shared.messages import StepPlan, StepResult
from shared.settings import Settings

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
                 show_progress: bool = True, knobs: Knobs | None = None):
        """knobs: the tuning switches (shared/knobs.py); None reads them from the environment, once, here."""
        self.settings = settings
        self.rank = rank
        self.knobs = knobs = knobs or read_knobs()
        self.model_config = cfg = model_config or load_model_config(settings, knobs)
        self.device = resolve_device(settings, rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            from kernels.fp8_linear import set_skinny_max_m
            from kernels.pdl import set_enabled
            from kernels.skinny_gemm import set_max_m

            set_enabled(knobs.pdl)  # before the warm-up compiles kernels and the graphs capture them
            set_max_m(knobs.skinny_gemm_max_m)
            set_skinny_max_m(knobs.fp8_skinny_max_m)
        init_tensor_parallel(settings.tensor_parallel_size, rank, self.device, knobs.dist_timeout_s)
        self.dtype = resolve_dtype(settings, self.device)
        self.kv_dtype = kv_cache_torch_dtype(settings, self.dtype)  # a bad --kv-cache-dtype fails before loading
        enable_peer_all_reduce(self.dtype, self.device, cfg.hidden_size, knobs)
        self.block_size = settings.block_size
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                self.model = MODELS[cfg.architecture](cfg)
        finally:
            torch.set_default_dtype(default_dtype)
        load_weights(self.model, cfg, show_progress=show_progress and rank == 0, knobs=knobs)
        self.model.eval()
        self.num_kv_blocks = self._allocate_kv_cache()
        self.sampler = Sampler(self.device, settings.seed)
        self.block_tables: dict[int, list[int]] = {}
        self.states: dict[int, SamplingState] = {}
        self.prompt_scored: dict[int, list[int]] = {}  # seq id -> prompt ids, for sequences asking prompt logprobs
        self.grammars = GrammarDecoding(lambda: _grammar_tokenizer(settings), cfg.vocab_size, self.device,
                                        settings.max_num_seqs,  # issue 15: matchers of constrained sequences
                                        knobs.grammar_compile_threads or (4 if self.device.type == "cuda" else 1))
        self._pending: _Step | None = None  # submitted, not finished
        self._last_tokens: torch.Tensor | None = None  # the last sampled step's tokens, on the device
        self._last_rows: dict[int, int] = {}  # seq id -> row of _last_tokens
        self.idle_meter = GpuIdleMeter() if self.device.type == "cuda" else None
        self.finished_runs: list = []  # IdleRuns the meter closed, for the service to log
        self._warm_up()
        self.mixed_graphs = self._capture_mixed_graphs()  # first: the largest activations; decode graphs share its pool
        self.graphs = self._capture_cuda_graphs()

    @torch.inference_mode()
    def _warm_up(self) -> None:
        """Run one small mixed step (a decode row and a 3-token prefill) so that Triton compiles the eager
        kernels now rather than during the first request (over a second of stall each). Its K/V goes to
        blocks 0 and 1, which hold nothing yet. Every rank runs it: its all-reduces pair up."""
        if self.device.type != "cuda" or self.num_kv_blocks < 2:
            return
        dev, bs = self.device, self.block_size
        meta = AttentionMetadata(
            slot_mapping=torch.tensor([0, bs, bs + 1, bs + 2], device=dev),
            block_tables=torch.tensor([[0], [1]], dtype=torch.int32, device=dev),
            context_lens=torch.tensor([1, 3], dtype=torch.int32, device=dev),
            cu_seqlens_q=torch.tensor([0, 1, 4], dtype=torch.int32, device=dev),
            max_query_len=3, max_context_len=3, num_decode_seqs=1)
        with attention_context(meta):
            hidden = self.model(torch.zeros(4, dtype=torch.long, device=dev), torch.tensor([0, 0, 1, 2], device=dev))
        self.model.compute_logits(hidden[torch.tensor([0, 3], device=dev)])
        torch.cuda.synchronize(dev)

    def _capture_cuda_graphs(self):
        # With tensor parallelism the graphs hold the layers' NCCL all-reduces: every rank captures the
        # same ladder in the same order (CudaGraphRunner), so the collectives pair up at capture and replay.
        if self.device.type != "cuda" or self.settings.enforce_eager:
            return None
        from engine.cuda_graphs import CudaGraphRunner

        pool = self.mixed_graphs.pool if self.mixed_graphs is not None else None
        return CudaGraphRunner(self.model, self.settings.max_num_seqs, self.model_config.max_model_len,
                               self.block_size, self.device, pool)

    def _capture_mixed_graphs(self):
        s = self.settings
        if self.device.type != "cuda" or s.enforce_eager or s.cuda_graph_max_tokens <= 0:
            return None
        from engine.mixed_graphs import MixedGraphRunner

        return MixedGraphRunner(self.model, s.cuda_graph_max_tokens, s.max_num_seqs, self.model_config.max_model_len,
                                self.block_size, self.device)

    def _allocate_kv_cache(self) -> int:
        cfg, s = self.model_config, self.settings
        layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        kv_heads = layers[0].num_kv_heads
        kv_dtype = self.kv_dtype  # --kv-cache-dtype fp8: one byte, twice the blocks
        bytes_per_block = kv_bytes_per_block(len(layers), kv_heads, cfg.head_dim, s.block_size, kv_dtype.itemsize)
        # the one sizing rule, shared with `ferry estimate` (engine/memory_plan.py)
        free, total = torch.cuda.mem_get_info(self.device) if self.device.type == "cuda" else (0, 0)
        num_blocks = kv_pool_blocks(s, bytes_per_block, self.device.type, free, total)
        # enough for one max_model_len sequence, else requests would be rejected needlessly
        if num_blocks < 1:
            raise RuntimeError("no memory left for the KV cache")
        cache = torch.zeros(2, len(layers), num_blocks, s.block_size, kv_heads, cfg.head_dim, dtype=kv_dtype,
                            device=self.device)
        for i, layer in enumerate(layers):
            layer.k_cache, layer.v_cache = cache[0, i], cache[1, i]  # views: they keep the pool alive
        log.info("KV cache: %d blocks of %d tokens, %s (%.1f MiB)", num_blocks, s.block_size,
                 str(kv_dtype).removeprefix("torch."), cache.numel() * cache.element_size() / 2**20)
        return num_blocks

    # ------------------------------------------------------------------ one step
    #
    # A step is forward, sample, finish. submit() overlaps consecutive steps: it launches plan N+1's forward
    # (its pending input tokens taken on the device from step N's samples), then finishes step N (waits for
    # N's tokens, records them), then launches N+1's sampling. The GPU runs N+1 while the host reports N.
    # Sampling waits for the previous finish because penalties read each sequence's token history.

    def _apply_plan_state(self, plan: StepPlan) -> None:
        for g in plan.grammars_to_compile:  # prompts the scheduler holds back until these are compiled
            self.grammars.prefetch(g.key, g.kind, g.spec)
        for ns in plan.new_seqs:
            self.block_tables[ns.seq_id] = []
            self.states[ns.seq_id] = SamplingState.create(
                ns.seq_id, ns.params, unpack_ids(ns.prompt_token_ids).tolist(),
                unpack_ids(ns.eos_token_ids).tolist(), self.device)
            if ns.params.prompt_logprobs is not None:
                self.prompt_scored[ns.seq_id] = self.states[ns.seq_id].prompt_token_ids
            if ns.params.grammar_kind:
                self.grammars.attach(self.states[ns.seq_id])
        for sid in unpack_ids(plan.finished_seq_ids).tolist():
            self.block_tables.pop(sid, None)
            self.prompt_scored.pop(sid, None)
            state = self.states.pop(sid, None)
            if state is not None and state.grammar is not None:
                self.grammars.release(state)

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> StepResult | None:
        """One step, start to end (no step may be outstanding)."""
        assert self._pending is None, "execute() with a submitted step outstanding: flush() first"
        self.submit(plan)
        return self.flush()

    @torch.inference_mode()
    def submit(self, plan: StepPlan) -> StepResult | None:
        """Launch plan's step; return the previous step's result (None on ranks other than 0, or if none)."""
        step = self._forward(plan)
        result = self.flush()
        self._sample(step)
        self._pending = step
        return result

    @torch.inference_mode()
    def flush(self) -> StepResult | None:
        """Finish the outstanding step, if any, and return its result (rank 0)."""
        step, self._pending = self._pending, None
        return self._finish(step) if step is not None else None

    def pending_done(self) -> bool:
        """The outstanding step's GPU work has finished (or there is none): flushing would not wait."""
        step = self._pending
        return step is None or step.event is None or step.event.query()

    @property
    def has_pending(self) -> bool:
        return self._pending is not None

    def _forward(self, plan: StepPlan) -> "_Step":
        self._apply_plan_state(plan)
        inputs = build_step_inputs(plan, self.block_tables, self.block_size)
        if inputs is None:
            return _Step(plan.step_id, unpack_ids(plan.seq_ids), [], None)
        started = None
        if self.idle_meter is not None:  # the step's device work starts here (above: host work only)
            started = torch.cuda.Event(enable_timing=True)
            started.record()
        fill_pending, token_ids = self._pending_inputs(inputs)
        if self.graphs is not None and self.graphs.can_run(inputs.num_tokens, inputs.table_width):
            hidden = self.graphs.run(token_ids, inputs.positions, inputs.slots, inputs.context_lens,
                                     inputs.block_tables, fill_pending)
        elif self.mixed_graphs is not None and (size := self.mixed_graphs.size_for(inputs)) is not None:
            hidden = self.mixed_graphs.run(inputs, token_ids, size, fill_pending)
        else:
            hidden = self._run_eager(inputs, token_ids, fill_pending)
        prompt_scores = self._score_prompts(inputs, hidden) if self.prompt_scored else []
        sampled, rows = inputs.sampled_rows()
        if rows is not None:  # some rows are prompt chunks or not last tokens
            hidden = hidden[to_device(rows, self.device)]
        logits = self.model.compute_logits(hidden)  # every rank joins the vocab all-gather
        return _Step(plan.step_id, sampled, [self.states[sid] for sid in sampled.tolist()], logits, started=started,
                     prompt_logprobs=prompt_scores)

    def _score_prompts(self, inputs: StepInputs, hidden: torch.Tensor) -> list:
        """Prompt logprobs of this step's rows whose sequences ask for them (issue 14; engine/prompt_logprobs.py)."""
        found = prompt_targets(inputs.positions, inputs.cu_seqlens, inputs.seq_ids, self.prompt_scored)
        if found is None:
            return []
        rows, targets, spans = found
        top_k = {sid: self.states[sid].params.prompt_logprobs for sid, _, _ in spans}
        return score_prompt_rows(self.model.compute_logits, hidden, rows, targets, spans, top_k)

    def _run_eager(self, inputs: StepInputs, token_ids: np.ndarray, fill_pending) -> torch.Tensor:
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=to_device(inputs.slots, dev), block_tables=to_device(inputs.block_tables, dev),
            context_lens=to_device(inputs.context_lens.astype(np.int32), dev),
            cu_seqlens_q=to_device(inputs.cu_seqlens, dev), max_query_len=int(inputs.num_tokens.max()),
            max_context_len=int(inputs.context_lens.max()), num_decode_seqs=inputs.num_decode_seqs())
        if dev.type != "cuda":
            for k, v in torch_backend_indices(inputs.num_tokens.tolist(), inputs.context_lens.tolist(),
                                              inputs.tables, self.block_size, dev).items():
                setattr(meta, k, v)
        input_ids = to_device(token_ids.astype(np.int64), dev)
        if fill_pending is not None:
            fill_pending(input_ids)
        with attention_context(meta):
            return self.model(input_ids, to_device(inputs.positions.astype(np.int64), dev))

    def _pending_inputs(self, inputs: StepInputs):
        """Input tokens the scheduler did not know yet (PENDING_TOKEN) are this rank's samples of the last step.
        Returns a function that writes them into the device input ids (None when there are none), and the
        token ids with those holes made valid."""
        token_ids = inputs.token_ids
        holes = np.flatnonzero(token_ids < 0)
        if len(holes) == 0:
            return None, token_ids
        rows = self._last_rows
        try:
            src = np.fromiter((rows[sid] for sid in inputs.seq_ids[inputs.seq_of_token[holes]].tolist()),
                              dtype=np.int64, count=len(holes))
        except KeyError as e:
            raise RuntimeError(f"the plan wants sequence {e.args[0]}'s last token, which the last step did not "
                               "sample") from None
        token_ids = token_ids.copy()  # unpacked from the message: read-only
        token_ids[holes] = 0  # a valid id until the device copy lands
        dev, last = self.device, self._last_tokens
        holes_t, src_t = to_device(holes, dev), to_device(src, dev)

        def fill(input_ids: torch.Tensor) -> None:
            input_ids[holes_t] = last[src_t].to(input_ids.dtype)
        return fill, token_ids

    def _sample(self, step: "_Step") -> None:
        if step.logits is None:
            return
        masks = self.grammars.fill(step.states) if self.grammars.active else None  # the last step's tokens are in
        step.tokens, step.raw_logprobs = self.sampler.sample(step.logits, step.states, masks)
        step.logits = None
        self._last_tokens = step.tokens
        self._last_rows = {sid: i for i, sid in enumerate(step.seq_ids.tolist())}
        if self.device.type == "cuda":
            step.host_tokens = step.tokens.to("cpu", non_blocking=True)
            step.event = torch.cuda.Event(enable_timing=step.started is not None)
            step.event.record()
        else:
            step.host_tokens = step.tokens

    def _finish(self, step: "_Step") -> StepResult | None:
        compiled = self.grammars.take_compiled()  # every rank drains its own; rank 0's go to the scheduler
        if step.tokens is None:  # an empty step
            return StepResult(step.step_id, b"", b"", grammars_compiled=compiled) if self.rank == 0 else None
        if step.event is not None:
            step.event.synchronize()
            if step.started is not None:
                ended = self.idle_meter.step_done(step.started, step.event)
                if ended is not None:
                    self.finished_runs.append(ended)
        tokens = step.host_tokens.tolist()
        if self.grammars.active:
            self.grammars.advance(step.states, tokens)
        logprobs = self.sampler.finish(tokens, step.states, step.raw_logprobs)
        if self.rank != 0:
            return None
        return StepResult(step.step_id, pack_ids(step.seq_ids), pack_ids(tokens), logprobs,
                          prompt_logprobs=step.prompt_logprobs or [], grammars_compiled=compiled)


@dataclass(slots=True, eq=False)
class _Step:
    """One submitted step, from its forward to its finish."""
    step_id: int
    seq_ids: np.ndarray  # sequences that sample, in row order
    states: list[SamplingState]
    logits: torch.Tensor | None
    tokens: torch.Tensor | None = None  # on the device
    raw_logprobs: torch.Tensor | None = None
    host_tokens: torch.Tensor | None = None  # pinned, filled once event has passed
    event: "torch.cuda.Event | None" = None
    started: "torch.cuda.Event | None" = None  # timing: just before the step's first device work
    prompt_logprobs: list | None = None  # PromptLogprobs of the rows that asked (issue 14)


def _grammar_tokenizer(settings):
    from engine.structured.grammars import grammar_tokenizer  # imports xgrammar: only once a grammar is asked for

    return grammar_tokenizer(settings)
