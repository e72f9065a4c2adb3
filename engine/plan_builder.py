"""A step's StepPlan from the scheduler's choice of (sequence, tokens) pairs: only deltas go on the wire.

A sequence the runner has not seen goes out whole once (NewSequence); after that a plan carries, per
sequence, its token count, its first position, the input tokens the scheduler knows (PENDING_TOKEN where
the runner fills in its own last sample), the blocks added since the last plan and whether it samples.
Building the plan also advances each sequence's bookkeeping (computed tokens, pending samples, blocks on
the runner): the plan is what the runner will have done once it runs.
"""
from __future__ import annotations

from engine.sequence import Sequence
from shared.codec import pack_ids
from shared.messages import NewSequence, StepPlan

PENDING_TOKEN = -1  # a plan's input token that the runner takes from its own previous step


def build_step_plan(step_id: int, scheduled: list[tuple[Sequence, int]], eos_token_ids: list[int],
                    forget: list[int]) -> tuple[StepPlan, int]:
    """The plan, and how many tokens it carries."""
    new_seqs, seq_ids, num_tokens, starts, token_ids = [], [], [], [], []
    kept, num_new_blocks, new_blocks, sample = [], [], [], []
    # One-token sequences first: the runner sends them through the decode attention kernel.
    scheduled.sort(key=lambda sn: sn[1] != 1)
    for seq, n in scheduled:
        if not seq.known_to_runner:
            new_seqs.append(NewSequence(seq.seq_id, pack_ids(seq.prompt_token_ids), seq.params,
                                        pack_ids(eos_token_ids)))
            seq.known_to_runner = True
        start = seq.num_computed_tokens
        seq_ids.append(seq.seq_id)
        num_tokens.append(n)
        starts.append(start)
        known = seq.token_ids[start:start + n]
        token_ids.extend(known)
        token_ids.extend([PENDING_TOKEN] * (n - len(known)))
        kept.append(seq.blocks_on_runner)
        added = seq.block_table[seq.blocks_on_runner:]
        num_new_blocks.append(len(added))
        new_blocks.extend(added)
        seq.blocks_on_runner = len(seq.block_table)
        samples = start + n == seq.num_tokens + seq.num_pending and seq.params.max_tokens > 0
        sample.append(samples)
        seq.num_computed_tokens = start + n
        seq.num_pending += samples
    plan = StepPlan(step_id, new_seqs, pack_ids(seq_ids), pack_ids(num_tokens), pack_ids(starts),
                    pack_ids(token_ids), pack_ids(kept), pack_ids(num_new_blocks), pack_ids(new_blocks),
                    bytes(sample), pack_ids(forget))
    return plan, len(token_ids)
