"""A step's model inputs on the host, built from its StepPlan and the runner's block tables: numpy only.

The plan carries only what changed (per sequence: its new tokens, where they start, the blocks it keeps
and the blocks it gains); the runner keeps every sequence's block table between steps. From both this
builds the token positions, each token's KV-cache slot, the padded block-table array, the context lengths
and which rows of the model's output are sampled. No model, no device: the runner copies these across and
runs them (CUDA graph or eager), and tests check them by hand.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.codec import unpack_ids
from shared.messages import StepPlan


@dataclass(slots=True, eq=False)
class StepInputs:
    seq_ids: np.ndarray  # [B] int32, in row order
    num_tokens: np.ndarray  # [B] new tokens of each sequence
    token_ids: np.ndarray  # [T] read-only (the message's bytes); PENDING_TOKEN (-1) where the runner fills in
    positions: np.ndarray  # [T] absolute position of each token
    slots: np.ndarray  # [T] int64 KV-cache slot of each token
    seq_of_token: np.ndarray  # [T] row (0..B-1) of each token's sequence
    context_lens: np.ndarray  # [B] tokens in the cache after this step, the new ones included
    cu_seqlens: np.ndarray  # [B+1] int32: tokens of row i are [cu[i], cu[i+1])
    block_tables: np.ndarray  # [B, max_blocks] int32, zero-padded
    tables: list[list[int]]  # the runner's own per-sequence tables (the torch attention backend reads them)
    sample_mask: bytes  # [B] uint8, as the plan sends it

    @property
    def table_width(self) -> int:
        return self.block_tables.shape[1]

    def num_decode_seqs(self) -> int:
        """Rows [0, n) have one token each (the scheduler puts decode rows first in a mixed step)."""
        multi = self.num_tokens != 1
        return int(np.argmax(multi)) if multi.any() else len(self.num_tokens)

    def sampled_rows(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(the sequences that sample, the output rows they sample from: each one's last token; None when that
        is every row already, a pure decode step)."""
        mask = np.frombuffer(self.sample_mask, dtype=np.uint8).astype(bool)
        sampled = self.seq_ids[mask]
        if len(sampled) == len(self.token_ids):
            return sampled, None
        return sampled, (self.cu_seqlens[1:] - 1)[mask].astype(np.int64)


def update_block_tables(plan: StepPlan, seq_ids: np.ndarray, block_tables: dict[int, list[int]]) -> list[list[int]]:
    """Apply the plan's block changes to the runner's tables (in place: they persist between steps) and return
    each sequence's table in row order: table[:blocks_kept] + its share of new_block_ids."""
    kept, num_new = unpack_ids(plan.blocks_kept).tolist(), unpack_ids(plan.num_new_blocks).tolist()
    new_blocks = unpack_ids(plan.new_block_ids).tolist()
    tables, offset = [], 0
    for sid, k, n in zip(seq_ids.tolist(), kept, num_new):
        table = block_tables[sid]
        del table[k:]
        table.extend(new_blocks[offset:offset + n])
        offset += n
        tables.append(table)
    return tables


def build_step_inputs(plan: StepPlan, block_tables: dict[int, list[int]], block_size: int) -> StepInputs | None:
    """The plan's inputs (None for an empty step); updates block_tables as the plan says."""
    seq_ids = unpack_ids(plan.seq_ids)
    if len(seq_ids) == 0:
        return None
    tables = update_block_tables(plan, seq_ids, block_tables)
    num_tokens = unpack_ids(plan.num_tokens)
    starts = unpack_ids(plan.start_positions)
    context_lens = starts + num_tokens
    cu = np.zeros(len(seq_ids) + 1, dtype=np.int32)
    np.cumsum(num_tokens, out=cu[1:])
    seq_of_token = np.repeat(np.arange(len(seq_ids)), num_tokens)
    positions = starts[seq_of_token] + (np.arange(cu[-1]) - cu[:-1][seq_of_token])
    padded = np.zeros((len(tables), max(len(t) for t in tables)), dtype=np.int32)
    for i, t in enumerate(tables):
        padded[i, :len(t)] = t
    slots = padded[seq_of_token, positions // block_size].astype(np.int64) * block_size + positions % block_size
    return StepInputs(seq_ids, num_tokens, unpack_ids(plan.token_ids), positions, slots, seq_of_token, context_lens,
                      cu, padded, tables, plan.sample_mask)
