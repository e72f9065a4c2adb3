"""The step protocol between the scheduler and the runner ranks: plans out, rank 0's results back.

Part of shared/messages.py's set of wire types (which imports these, so either module serves an import); the rules
are that module's: slotted dataclasses under fixed tags (shared/codec.py), fields appended at the end with a default,
token ids as packed int32 bytes.
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
    num_new_blocks[i] ids of new_block_ids; it is sampled when sample_mask[i] is 1. A token id of -1
    (PENDING_TOKEN) is the token the runner sampled for that sequence in the previous step: the
    scheduler sends a plan before it knows the last step's tokens.
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
    session: str = ""  # the scheduler session: a runner drops a plan of any other (forged, or from a dead engine)
    # grammars of prompts the scheduler holds back until they are compiled (engine/grammar_gate.py)
    grammars_to_compile: list["GrammarSpec"] = field(default_factory=list)


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
    # who answers: the scheduler acts only on results of its own session (a forged error must not reset it)
    session: str = ""
    rank: int = 0
    instance: str = ""
    prompt_logprobs: list["PromptLogprobs"] = field(default_factory=list)  # issue 14: requests that ask only
    grammars_compiled: list[int] = field(default_factory=list)  # GrammarSpec keys compiled since the last result


@message(24)
@dataclass(slots=True)
class GrammarSpec:
    """A grammar to compile ahead of its sequence (the runner compiles it on a thread of its own)."""

    key: int  # engine.grammar_gate.grammar_key(kind, spec)
    kind: str
    spec: str


@message(80)
@dataclass(slots=True)
class PromptLogprobs:
    """Logprobs of a sequence's prompt tokens first_target, first_target+1, ... (each given what precedes it),
    from the runner's rank 0; k = len(top_token_ids) // count entries of the top per position, flat."""

    seq_id: int
    first_target: int  # prompt index of the first token scored (>= 1: token 0 has no logprob)
    token_logprobs: bytes  # float32 [count]
    ranks: bytes  # int32 [count]
    top_token_ids: bytes  # int32 [count * k]
    top_logprobs: bytes  # float32 [count * k]
