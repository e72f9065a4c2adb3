"""Every message type that crosses a ferry socket, defined once.

Each class is a slotted dataclass registered with a fixed tag (see shared/codec.py). Append new
fields at the end with a default; never reorder or reuse a tag. Token ids travel as packed int32
bytes (shared.codec.pack_ids / unpack_ids).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from shared.codec import message
from shared.sampling_params import SamplingParams

message(1)(SamplingParams)


# ---------------------------------------------------------------- scheduler <-> runner ranks


@message(20)
@dataclass(slots=True)
class NewSequence:
    """Sent once, in the first plan that schedules a sequence: what the runner keeps per sequence."""

    seq_id: int
    prompt_token_ids: bytes  # int32; the sampler's penalties need the prompt
    params: SamplingParams
    eos_token_ids: bytes  # int32; masked while fewer than min_tokens are generated


@message(21)
@dataclass(slots=True)
class StepPlan:
    """One model step, the same for every rank. Per-sequence columns are packed int32 arrays.

    For sequence i: its input is num_tokens[i] tokens (from token_ids, concatenated) at positions
    start_positions[i]...; its block table becomes table[:blocks_kept[i]] + the next
    num_new_blocks[i] ids of new_block_ids; it is sampled when sample_mask[i] is 1.
    """

    step_id: int
    new_seqs: list[NewSequence]
    seq_ids: bytes
    num_tokens: bytes
    start_positions: bytes
    token_ids: bytes
    blocks_kept: bytes
    num_new_blocks: bytes
    new_block_ids: bytes
    sample_mask: bytes
    finished_seq_ids: bytes  # the runner forgets these (finished, aborted)


@message(22)
@dataclass(slots=True)
class SeqLogprobs:
    seq_id: int
    token_logprob: float
    top_token_ids: bytes  # int32
    top_logprobs: bytes  # float32


@message(23)
@dataclass(slots=True)
class StepResult:
    """Rank 0's answer to a plan: one sampled token per sampled sequence, in plan order."""

    step_id: int
    seq_ids: bytes
    token_ids: bytes
    logprobs: list[SeqLogprobs] = field(default_factory=list)
    error: str | None = None
