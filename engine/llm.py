"""The whole engine in one process: scheduler and runner joined by direct calls instead of sockets.

Tests and benchmarks use it; the services run the same two halves in separate processes.
"""
from __future__ import annotations

import itertools

from engine.model_runner import ModelRunner
from engine.scheduler import Scheduler
from shared.codec import unpack_ids
from shared.sampling_params import SamplingParams
from shared.settings import Settings


class LLM:
    def __init__(self, settings: Settings | None = None, runner: ModelRunner | None = None, **overrides):
        self.settings = settings or Settings(**overrides)
        self.runner = runner or ModelRunner(self.settings)
        self.model_config = self.runner.model_config
        # a scheduler may use fewer blocks than the runner holds (tests that force preemption)
        blocks = min(self.settings.num_kv_blocks or self.runner.num_kv_blocks, self.runner.num_kv_blocks)
        self.scheduler = Scheduler(self.settings, self.model_config, blocks)
        self._ids = itertools.count()
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from engine.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.settings)
        return self._tokenizer

    def step(self):
        """One step, start to end: schedule, run, apply."""
        plan = self.scheduler.schedule()
        if plan is None:
            return []
        return self.scheduler.update(self.runner.execute(plan))

    def step_overlapped(self):
        """Schedule and submit the next plan while the last one runs, as the services do; apply the result of
        the step that finished meanwhile. Returns what that step produced."""
        plan = self.scheduler.schedule() if self.scheduler.has_work() else None
        if plan is not None:
            result = self.runner.submit(plan)
        elif self.runner.has_pending:
            result = self.runner.flush()
        else:
            raise RuntimeError("the scheduler has work but schedules nothing, and no step is running")
        # a result is always the oldest plan's in flight (rank 0 answers every step it finishes)
        return self.scheduler.update(result) if result is not None else []

    @property
    def busy(self) -> bool:
        return self.scheduler.has_work() or self.runner.has_pending

    def generate(self, prompts: list[list[int]],
                 params: SamplingParams | list[SamplingParams]) -> list[list[list[int]]]:
        """Run token-id prompts to completion together; returns, per prompt, the n output token lists."""
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        order = []
        for prompt, p in zip(prompts, params_list):
            rid = f"req-{next(self._ids)}"
            p.validate()  # what the gateway does for the services
            self.scheduler.add_request(rid, 0, list(prompt), p)
            order.append((rid, p.n))
        outputs = {rid: [[] for _ in range(n)] for rid, n in order}
        while self.busy:
            for out in self.step_overlapped():
                outputs[out.request_id][out.index].extend(unpack_ids(out.token_ids).tolist())
        return [outputs[rid] for rid, _ in order]

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Token ids of a chat with plain-string contents (the tokenizer service also accepts text parts)."""
        from engine.tokenizer import chat_token_ids

        return chat_token_ids(self.tokenizer, messages)
