"""CUDA graphs for steps that carry prompt tokens (issue 17): mixed steps (decodes beside prompt chunks) and
small prefills.

Eagerly, a step of a 32-layer model launches some 420 kernels from Python, about 10 ms of host time on an
H200 host, while a step of a few hundred tokens needs only 4-7 ms of GPU time: under online load, when most
steps that are not pure decodes are such small mixed steps, the host sets the pace. Here the whole forward
of a step of up to T tokens is captured once per token count of a ladder (16, 32, ... 256 by 16, then by
32 up to --cuda-graph-max-tokens) and replayed for any step that fits, its rows padded to the size.

Row counts are fixed at capture, the split between decode rows and prompt rows is not, so attention reads
that split from device buffers (engine.layers.attention.FixedRows): the decode kernel runs over the first
min(T, max_num_seqs) rows, with context length 0 (nothing to do) past the step's real decodes; the prefill
kernel over a fixed number of prompt sequences (MAX_PROMPT_SEQS), padded with sequences of no new tokens.
Padding tokens write their K/V nowhere (slot -1) and their output rows are never read. A step with more
prompt sequences, more tokens or a wider block table than captured runs eagerly.
"""
from __future__ import annotations

import bisect
import logging

import numpy as np
import torch

from engine.cuda_graphs import capture_ladder
from engine.layers.attention import AttentionMetadata, FixedRows
from engine.step_inputs import StepInputs

log = logging.getLogger(__name__)

MAX_PROMPT_SEQS = 32  # prompt sequences one captured step holds (the prefill kernel's grid grows by one per)


def mixed_token_sizes(max_tokens: int) -> list[int]:
    """The captured token counts: by 16 to 256 (small prefills beside small decode batches are the common
    online step, and padding there is cheap), then by 32; the last is max_tokens itself."""
    sizes = [t for t in range(16, min(max_tokens, 256) + 1, 16)]
    sizes += [t for t in range(288, max_tokens + 1, 32)]
    if max_tokens > 0 and (not sizes or sizes[-1] != max_tokens):
        sizes.append(max_tokens)
    return sizes


class MixedInputs:
    """Every per-step input of the mixed graphs, as int32 views of one device buffer and its pinned host
    mirror. Small arrays first, then the prompt rows' block tables, then the decode rows' (the largest, last:
    a step copies the buffer only up to its last decode row)."""

    LAYOUT = ("input_ids", "positions", "slots", "decode_context_lens", "prompt_cu_seqlens", "prompt_context_lens")

    def __init__(self, max_tokens: int, max_decode_rows: int, max_blocks: int, device: torch.device):
        self.max_tokens, self.max_decode_rows, self.max_blocks = max_tokens, max_decode_rows, max_blocks
        P = MAX_PROMPT_SEQS
        lengths = (max_tokens, max_tokens, max_tokens, max_decode_rows, P + 1, P)
        self.offsets = dict(zip(self.LAYOUT, np.cumsum((0,) + lengths[:-1]).tolist()))
        self.lengths = dict(zip(self.LAYOUT, lengths))
        self.prompt_tables_at = sum(lengths)
        self.decode_tables_at = self.prompt_tables_at + P * max_blocks
        n = self.decode_tables_at + max_decode_rows * max_blocks
        self.host = torch.zeros(n, dtype=torch.int32, pin_memory=device.type == "cuda")
        self.host_np = self.host.numpy()
        self.device_buf = torch.zeros(n, dtype=torch.int32, device=device)
        self.copied = torch.cuda.Event() if device.type == "cuda" else None

    def _host(self, name: str) -> np.ndarray:
        at = self.offsets[name]
        return self.host_np[at:at + self.lengths[name]]

    def device(self, name: str, n: int) -> torch.Tensor:
        at = self.offsets[name]
        return self.device_buf[at:at + n]

    def tables(self, which: str, rows: int) -> torch.Tensor:
        at = self.prompt_tables_at if which == "prompt" else self.decode_tables_at
        return self.device_buf[at:at + rows * self.max_blocks].view(rows, self.max_blocks)

    def _host_tables(self, which: str) -> np.ndarray:
        at, rows = ((self.prompt_tables_at, MAX_PROMPT_SEQS) if which == "prompt"
                    else (self.decode_tables_at, self.max_decode_rows))
        return self.host_np[at:at + rows * self.max_blocks].reshape(rows, self.max_blocks)

    def metadata(self, size: int, decode_rows: int, block_size: int) -> AttentionMetadata:
        """What the graph of `size` tokens reads: views of the device buffer, so that each fill() reaches it."""
        P = MAX_PROMPT_SEQS
        prompt_cu = self.device("prompt_cu_seqlens", P + 1)
        return AttentionMetadata(
            slot_mapping=self.device("slots", size), block_tables=self.tables("decode", decode_rows),
            context_lens=self.device("decode_context_lens", decode_rows), cu_seqlens_q=prompt_cu,
            max_query_len=size, max_context_len=self.max_blocks * block_size,
            fixed_rows=FixedRows(decode_rows, prompt_cu, self.device("prompt_context_lens", P),
                                 self.tables("prompt", P)))

    def fill(self, inputs: StepInputs, token_ids: np.ndarray, size: int, decode_rows: int) -> None:
        """Write the step's rows and padding for a graph of `size` tokens and `decode_rows` decode rows, then copy
        them across in one transfer."""
        if self.copied is not None:  # the last step's copy may still be queued: its host rows must not change
            self.copied.synchronize()
        n, nd = len(token_ids), inputs.num_decode_seqs()
        p = len(inputs.num_tokens) - nd
        for name, values, pad in (("input_ids", token_ids, 0), ("positions", inputs.positions, 0),
                                  ("slots", inputs.slots, -1)):
            host = self._host(name)
            host[:n] = values
            host[n:size] = pad
        dec = self._host("decode_context_lens")
        dec[:nd] = inputs.context_lens[:nd]
        dec[nd:decode_rows] = 0  # rows past the real decodes: nothing to attend to
        cu = self._host("prompt_cu_seqlens")
        cu[:p + 1] = inputs.cu_seqlens[nd:]
        cu[p + 1:] = inputs.cu_seqlens[-1]  # padding sequences of no new tokens
        ctx = self._host("prompt_context_lens")
        ctx[:p] = inputs.context_lens[nd:]
        ctx[p:] = 0
        w = inputs.table_width
        self._host_tables("prompt")[:p, :w] = inputs.block_tables[nd:]  # columns past a context are never read
        self._host_tables("decode")[:nd, :w] = inputs.block_tables[:nd]
        end = self.decode_tables_at + nd * self.max_blocks
        self.device_buf[:end].copy_(self.host[:end], non_blocking=True)
        if self.copied is not None:
            self.copied.record()


class MixedGraphRunner:
    """Captures model(input_ids, positions) for each size of mixed_token_sizes(max_tokens); run() replays the
    smallest that holds a step."""

    def __init__(self, model: torch.nn.Module, max_tokens: int, max_num_seqs: int, max_model_len: int,
                 block_size: int, device: torch.device):
        self.model, self.block_size, self.max_num_seqs = model, block_size, max_num_seqs
        self.sizes = mixed_token_sizes(max_tokens)
        self.inputs = MixedInputs(self.sizes[-1], self.decode_rows(self.sizes[-1]), -(-max_model_len // block_size),
                                  device)
        captured = capture_ladder(self.sizes, self._metadata, self._forward)
        self.captured = captured  # its pool may be shared; its metadata must outlive the graphs
        self.graphs, self.outputs, self.pool = captured.graphs, captured.outputs, captured.pool
        log.info("captured mixed-step CUDA graphs for %d token counts up to %d", len(self.sizes), self.sizes[-1])

    def decode_rows(self, size: int) -> int:
        return min(size, self.max_num_seqs)

    def _metadata(self, size: int) -> AttentionMetadata:
        return self.inputs.metadata(size, self.decode_rows(size), self.block_size)

    def _forward(self, size: int) -> torch.Tensor:
        return self.model(self.inputs.device("input_ids", size), self.inputs.device("positions", size))

    def size_for(self, inputs: StepInputs) -> int | None:
        """The graph size that runs this step, or None (run it eagerly)."""
        n = len(inputs.token_ids)
        i = bisect.bisect_left(self.sizes, n)
        if i == len(self.sizes) or inputs.table_width > self.inputs.max_blocks:
            return None
        size, nd = self.sizes[i], inputs.num_decode_seqs()
        if len(inputs.num_tokens) - nd > MAX_PROMPT_SEQS or nd > self.decode_rows(size):
            return None
        return size

    def run(self, inputs: StepInputs, token_ids: np.ndarray, size: int, fill_inputs=None) -> torch.Tensor:
        """One step in the graph of `size` tokens (from size_for); returns the hidden states [n, hidden], valid
        until the next replay. fill_inputs(input_ids on the device) may write tokens only the device knows."""
        n = len(token_ids)
        self.inputs.fill(inputs, token_ids, size, self.decode_rows(size))
        if fill_inputs is not None:
            fill_inputs(self.inputs.device("input_ids", n))
        self.graphs[size].replay()
        return self.outputs[size][:n]
