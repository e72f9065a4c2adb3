"""CUDA graphs for pure-decode steps.

A decode step of a small model is dominated by launch overhead: hundreds of small kernels, each
costing a few microseconds of host time. Capturing the model's forward once per batch size in a
ladder (1, 2, 4, 8, 16, 24, 32, 48, 64, ...) and replaying the smallest graph that fits turns a
step into one launch. Inputs live in static device buffers the graphs were captured on; each step
copies its inputs there in one host-to-device transfer from a pinned mirror. Padding rows write
their K/V nowhere (slot -1) and attend over nothing (context length 0), so they cost a few idle
programs and change no real row. Steps with prompt tokens: engine/mixed_graphs.py.
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass

import numpy as np
import torch

from engine.layers.attention import AttentionMetadata, attention_context
from engine.parallel import tp_size

log = logging.getLogger(__name__)


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    """The ladder of captured batch sizes: dense where small batches are common, coarser above,
    always ending at max_num_seqs so that every decode batch the scheduler can form fits."""
    ladder, size = [], 1
    while size <= max_num_seqs:
        ladder.append(size)
        size = size * 2 if size < 8 else size + (8 if size < 32 else 16 if size < 64 else 32)
    if not ladder or ladder[-1] != max_num_seqs:
        ladder.append(max_num_seqs)
    return ladder


def padded_batch_size(n: int, ladder: list[int]) -> int | None:
    """The smallest captured size that holds n rows, or None (run eagerly)."""
    i = bisect.bisect_left(ladder, n)
    return ladder[i] if n > 0 and i < len(ladder) else None


class DecodeInputs:
    """Every per-step input of a decode graph, as int32 views of one device buffer and its pinned
    host mirror: [input_ids | positions | slots | context_lens] each max_bs long, then the block
    table, max_bs x max_blocks. A step fills the host rows it uses and copies one prefix across."""

    def __init__(self, max_bs: int, max_blocks: int, device: torch.device):
        self.max_bs, self.max_blocks = max_bs, max_blocks
        n = 4 * max_bs + max_bs * max_blocks
        self.host = torch.zeros(n, dtype=torch.int32, pin_memory=device.type == "cuda")
        self.device_buf = torch.zeros(n, dtype=torch.int32, device=device)
        self.host_np = self.host.numpy()
        self.copied = torch.cuda.Event() if device.type == "cuda" else None
        self.views = {name: self._views(name) for name in ("input_ids", "positions", "slots", "context_lens")}
        self.block_tables = self.device_buf[4 * max_bs:].view(max_bs, max_blocks)
        self.host_tables = self.host_np[4 * max_bs:].reshape(max_bs, max_blocks)
        # the whole batch of a capture: padding everywhere
        self.fill(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int32),
                  np.zeros((0, 1), np.int32), max_bs)

    def _views(self, name: str):
        i = ("input_ids", "positions", "slots", "context_lens").index(name)
        lo, hi = i * self.max_bs, (i + 1) * self.max_bs
        return self.device_buf[lo:hi], self.host_np[lo:hi]

    def device(self, name: str, bs: int) -> torch.Tensor:
        return self.views[name][0][:bs]

    def fill(self, input_ids, positions, slots, context_lens, block_tables, bs: int) -> None:
        """Write n real rows and bs - n padding rows on the host side, then copy them across."""
        n = len(input_ids)
        if self.copied is not None:
            # Steps overlap: the last step's copy may still be queued. It is next in line by the time the
            # next step is prepared, so this wait is short, but the host rows must not change before it.
            self.copied.synchronize()
        for name, values, pad in (("input_ids", input_ids, 0), ("positions", positions, 0), ("slots", slots, -1),
                                  ("context_lens", context_lens, 0)):
            host = self.views[name][1]
            host[:n] = values
            host[n:bs] = pad
        w = block_tables.shape[1]
        self.host_tables[:n, :w] = block_tables  # columns past a row's context are never read
        end = 4 * self.max_bs + bs * self.max_blocks
        self.device_buf[:end].copy_(self.host[:end], non_blocking=True)
        if self.copied is not None:
            self.copied.record()


class CudaGraphRunner:
    """Captures model(input_ids, positions) for each ladder size; replay() runs one decode step."""

    def __init__(self, model: torch.nn.Module, max_num_seqs: int, max_model_len: int, block_size: int,
                 device: torch.device, pool=None):
        """pool: another ladder's memory pool to share (engine/mixed_graphs.py: steps never overlap)."""
        self.model, self.block_size = model, block_size
        self.ladder = graph_batch_sizes(max_num_seqs)
        max_blocks = -(-max_model_len // block_size)
        self.inputs = DecodeInputs(self.ladder[-1], max_blocks, device)
        captured = capture_ladder(self.ladder, self._metadata, self._forward, pool)
        self.captured = captured  # its pool may be shared; its metadata must outlive the graphs
        self.graphs, self.outputs, self.pool = captured.graphs, captured.outputs, captured.pool
        log.info("captured decode CUDA graphs for batch sizes %s", self.ladder)

    def _metadata(self, bs: int) -> AttentionMetadata:
        inp = self.inputs
        return AttentionMetadata(
            slot_mapping=inp.device("slots", bs), block_tables=inp.block_tables[:bs],
            context_lens=inp.device("context_lens", bs),
            cu_seqlens_q=torch.arange(bs + 1, dtype=torch.int32, device=inp.device_buf.device),
            max_query_len=1, max_context_len=inp.max_blocks * self.block_size)

    def _forward(self, bs: int) -> torch.Tensor:
        return self.model(self.inputs.device("input_ids", bs), self.inputs.device("positions", bs))

    def can_run(self, num_tokens: np.ndarray, table_width: int) -> bool:
        """Pure decode (one new token per sequence, chunk ends included) of a batch that a graph holds."""
        n = len(num_tokens)
        return 0 < n <= self.ladder[-1] and int(num_tokens.max()) == 1 and table_width <= self.inputs.max_blocks

    def run(self, input_ids: np.ndarray, positions: np.ndarray, slots: np.ndarray, context_lens: np.ndarray,
            block_tables: np.ndarray, fill_inputs=None) -> torch.Tensor:
        """One decode step of n sequences; returns the hidden states [n, hidden] (valid until the next run).
        fill_inputs(input_ids on the device) may write input tokens that only the device knows."""
        n = len(input_ids)
        bs = padded_batch_size(n, self.ladder)
        self.inputs.fill(input_ids, positions, slots, context_lens, block_tables, bs)
        if fill_inputs is not None:
            fill_inputs(self.inputs.device("input_ids", n))
        self.graphs[bs].replay()
        return self.outputs[bs][:n]


@torch.inference_mode()
def capture_ladder(sizes: list[int], metadata, forward, pool=None):
    """Capture forward(size) under attention_context(metadata(size)) for every size, largest first so that the
    smaller graphs reuse its memory pool. Returns a CapturedLadder.

    With tensor parallelism the graphs hold the layers' NCCL all-reduces: every rank captures the same sizes in
    the same order, so the collectives pair up at capture and replay."""
    ladder = CapturedLadder({}, {}, None, [])
    torch.cuda.synchronize()
    mode = "thread_local" if tp_size() > 1 else "global"
    for size in sorted(sizes, reverse=True):
        meta = metadata(size)
        with attention_context(meta):
            for _ in range(2):  # compile every kernel variant outside the capture
                forward(size)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            # thread-local capture under TP: the NCCL watchdog thread keeps querying its events while this
            # thread captures, and must not invalidate the capture (a precaution; global mode was not tried)
            with torch.cuda.graph(graph, pool=pool, capture_error_mode=mode):
                ladder.outputs[size] = forward(size)
        pool = graph.pool()
        ladder.graphs[size] = graph
        ladder.metas.append(meta)
    torch.cuda.synchronize()
    ladder.pool = pool
    return ladder


@dataclass(eq=False)
class CapturedLadder:
    graphs: dict  # size -> torch.cuda.CUDAGraph
    outputs: dict  # size -> the output tensor its replays write
    pool: object  # the memory pool, for another ladder to share
    metas: list  # the graphs read these metadata tensors (some are not views of an inputs buffer): kept alive


def replay_time_ms(graph: torch.cuda.CUDAGraph, n: int = 20) -> float:
    """GPU time of one replay, replayed back to back after a warm-up (benchmarks; no host gaps counted)."""
    for _ in range(3):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n
