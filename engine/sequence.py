"""A sequence as the scheduler sees it: its tokens, how many are in the KV cache, and its blocks."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from shared.sampling_params import SamplingParams


class SeqStatus(Enum):
    WAITING = 0
    RUNNING = 1
    FINISHED = 2


@dataclass(slots=True, eq=False)
class Sequence:
    seq_id: int
    request_id: str
    gateway_id: int
    index: int  # which of the request's n samples
    params: SamplingParams
    token_ids: list[int]  # prompt, then each sampled token
    num_prompt_tokens: int
    arrival: float = 0.0
    status: SeqStatus = SeqStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache or on their way there (scheduled)
    # Tokens sampled by steps still in flight: scheduled as inputs already (the runner fills in the value
    # it sampled), appended to token_ids when their step's result comes back.
    num_pending: int = 0
    num_cached_tokens: int = 0  # of those, how many came from the prefix cache
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # chained hash of each full, committed block
    blocks_on_runner: int = 0  # how much of block_table the runner already holds (plans send deltas)
    known_to_runner: bool = False
    leader: "Sequence | None" = None  # n > 1: wait until the leader's prompt is cached, then share it
    finish_reason: str | None = None
    scheduled_at: float = 0.0  # first admitted to a step (metrics: queue and prefill time)
    first_token_at: float = 0.0  # its first sampled token came back
    prompt_scores: object | None = None  # engine.prompt_logprobs.PromptScores when the request asks (issue 14)
    grammar_key: int = 0  # engine.grammar_gate.grammar_key of its grammar; 0: unconstrained

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[:self.num_prompt_tokens]
