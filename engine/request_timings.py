"""The engine's per-request phase times and tokens per step, as vLLM's request_* histograms define them.

queue time: arrival at the scheduler to first scheduled; prefill time: first scheduled to first token;
decode time: first token to finish; inference time: first scheduled to finish. Each is observed once per
sequence when it finishes (aborted ones included, if they got that far), never per token: the first token's
time is taken per step, over the sequences still waiting for theirs (Scheduler.prefilling), not over all.
"""
from __future__ import annotations

from engine.sequence import Sequence
from shared.buckets import REQUEST_TIME_BUCKETS, BucketHistogram, step_token_buckets
from shared.messages import BucketCounts


class RequestTimings:
    def __init__(self, max_num_batched_tokens: int):
        self.queue = BucketHistogram(REQUEST_TIME_BUCKETS)
        self.prefill = BucketHistogram(REQUEST_TIME_BUCKETS)
        self.decode = BucketHistogram(REQUEST_TIME_BUCKETS)
        self.inference = BucketHistogram(REQUEST_TIME_BUCKETS)
        self.step_tokens = BucketHistogram(step_token_buckets(max_num_batched_tokens))

    def finished(self, seq: Sequence, now: float) -> None:
        if seq.scheduled_at <= 0.0:
            return  # aborted while waiting: it never ran
        self.queue.observe(seq.scheduled_at - seq.arrival)
        self.inference.observe(now - seq.scheduled_at)
        if seq.first_token_at > 0.0:
            self.prefill.observe(seq.first_token_at - seq.scheduled_at)
            self.decode.observe(now - seq.first_token_at)

    def snapshot(self) -> list[BucketCounts]:
        named = (("request_queue_time_seconds", self.queue), ("request_prefill_time_seconds", self.prefill),
                 ("request_decode_time_seconds", self.decode), ("request_inference_time_seconds", self.inference),
                 ("iteration_tokens", self.step_tokens))
        return [BucketCounts(name, list(h.bounds), list(h.counts), h.total) for name, h in named]
