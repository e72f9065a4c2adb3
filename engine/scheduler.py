"""Continuous batching: which sequences run in the next step, and with how many tokens each.

Every step (Scheduler.schedule): every running decode first, whatever the token budget; then prompt
chunks (running sequences' next chunks, oldest first, then waiting prompts while max_num_seqs allows)
into the room left by max_num_batched_tokens and max_prefill_tokens. When blocks run out, the newest
running sequence is preempted (its blocks freed, recomputed later) and goes back to the front of the
queue. The step goes out as a StepPlan that carries only deltas. While others run, a grammar-constrained prompt
waits until the runners report its grammar compiled (engine/grammar_gate.py), so no step waits for a compile.

Steps may overlap: the next plan can be scheduled while the last one runs, so that the GPU never
waits for the host. A sequence whose sampled token is still on its way (num_pending) is scheduled
with a placeholder (-1) as its input token; the runner fills in the token it sampled in the previous
step. A sequence that will have reached max_tokens once its pending tokens arrive is not scheduled.

The Scheduler is the one owner of the scheduler process's state: the live requests (and how many of
their sequences are unfinished), the plans in flight (oldest first; a result must answer the oldest),
and the wire deltas (SeqDelta) each result produces. Finishing or aborting is O(1) per sequence:
the queues are insertion-ordered dicts, so a sequence leaves them without a scan.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from engine.block_manager import BlockManager
from engine.grammar_gate import GrammarGate
from engine.model_config import ModelConfig
from engine.plan_builder import PENDING_TOKEN, build_step_plan  # noqa: F401 (PENDING_TOKEN: re-exported)
from engine.prompt_logprobs import PromptScores
from engine.request_timings import RequestTimings
from engine.sequence import SeqStatus, Sequence
from shared.codec import pack_ids, unpack_ids
from shared.errors import InvalidParameter, PromptTooLong
from shared.messages import SchedulerCounters, SeqDelta, SeqLogprobs, StepPlan, StepResult
from shared.sampling_params import SamplingParams, choice_seed
from shared.settings import Settings

log = logging.getLogger("ferry.scheduler")

# Plans out at once: the next one goes out while the runners still work on the last, so they never wait for
# this process between steps. More would only schedule further ahead on placeholders.
MAX_INFLIGHT = 2
MAX_N = 1 << 16  # choices per request; the detokenizer drops a registration with more (services.detokenizer.service)


@dataclass(slots=True)
class Request:
    """A live request: its n sequences, and how many of them have not finished yet."""

    gateway_id: int
    seqs: list[Sequence]
    num_unfinished: int


@dataclass(slots=True)
class InflightStep:
    """A plan sent and not answered: which sequences it scheduled, with how many tokens each."""

    step_id: int
    scheduled: list[tuple[Sequence, int]]


class Scheduler:
    def __init__(self, settings: Settings, model_config: ModelConfig, num_kv_blocks: int,
                 max_inflight: int = MAX_INFLIGHT):
        self.block_size = settings.block_size
        self.max_num_seqs = settings.max_num_seqs
        self.max_num_batched_tokens = settings.max_num_batched_tokens
        self.max_prefill_tokens = settings.max_prefill_tokens  # 0: no bound beyond max_num_batched_tokens
        self.max_model_len = min(model_config.max_model_len, settings.max_model_len or model_config.max_model_len)
        self.vocab_size = model_config.vocab_size
        self.eos_token_ids = list(model_config.eos_token_ids)
        self.max_inflight = max_inflight
        self.blocks = BlockManager(num_kv_blocks, settings.block_size, settings.enable_prefix_caching)
        # Insertion-ordered sets (the values are None): oldest first, O(1) removal of any sequence.
        self.waiting: OrderedDict[Sequence, None] = OrderedDict()
        self.running: dict[Sequence, None] = {}
        self.requests: dict[str, Request] = {}  # live: at least one sequence not finished
        self.inflight: deque[InflightStep] = deque()
        self._next_seq_id = 0
        self._next_step_id = 0
        self._forget_on_runner: list[int] = []
        self._aborted: list[SeqDelta] = []  # single choices' last deltas, out with the next result
        self.num_preemptions = 0
        self.prefix_queried_tokens = 0
        self.prefix_hit_tokens = 0
        self.num_finished = 0
        self.timings = RequestTimings(settings.max_num_batched_tokens)
        # admitted, first token not back yet: the only sequences update() looks at for first-token times
        self.prefilling: dict[Sequence, None] = {}
        self.grammar_gate = GrammarGate()  # constrained prompts wait for their grammar while others run

    # ------------------------------------------------------------------ requests in and out

    def add_request(self, request_id: str, gateway_id: int, prompt_token_ids: list[int],
                    params: SamplingParams) -> None:
        if request_id in self.requests:
            raise InvalidParameter(f"request id {request_id!r} is already in use", param="request_id")
        # The request was validated where it entered (gateway, tokenizer). Only what this class relies on is
        # checked again, so that a forged or malformed request is rejected instead of breaking the loop.
        params.validate()  # ranges that the plan's encoding and the sampler rely on (seed, int32, finite floats)
        params.check_length(len(prompt_token_ids), self.max_model_len, self.vocab_size)
        if min(prompt_token_ids) < 0 or max(prompt_token_ids) >= self.vocab_size:  # an embedding lookup out of range
            raise InvalidParameter(f"the prompt holds token ids outside the vocabulary (0 to {self.vocab_size - 1})",
                                   param="prompt")
        params = params.with_max_tokens_for(len(prompt_token_ids), self.max_model_len)  # LLM callers may leave None
        if params.n < 1 or params.max_tokens < (0 if params.prompt_logprobs is not None else 1):
            raise InvalidParameter(f"n and max_tokens must be at least 1, got {params.n} and {params.max_tokens}")
        if params.n > MAX_N:  # a sequence object each: a forged n of 10**9 must not stall the loop
            raise InvalidParameter(f"n must be at most {MAX_N}, got {params.n}", param="n")
        need = self.blocks.blocks_for(len(prompt_token_ids) + params.max_tokens)
        if need > self.blocks.num_blocks:
            raise PromptTooLong(f"the request needs {need} KV blocks of {self.block_size} tokens "
                                f"but the cache holds {self.blocks.num_blocks}", param="max_tokens")
        seqs, grammar_key = [], self.grammar_gate.note(params)
        for i in range(params.n):
            p = params if i == 0 or params.seed is None else dataclasses.replace(params,
                                                                                 seed=choice_seed(params.seed, i))
            if i > 0 and p.prompt_logprobs is not None:  # the prompt is scored once, by the first choice
                p = dataclasses.replace(p, prompt_logprobs=None)
            seq = Sequence(self._next_seq_id, request_id, gateway_id, i, p, list(prompt_token_ids),
                           len(prompt_token_ids), arrival=time.monotonic(), leader=seqs[0] if seqs else None,
                           grammar_key=grammar_key)
            if p.prompt_logprobs is not None:
                seq.prompt_scores = PromptScores(len(prompt_token_ids))
            self._next_seq_id += 1
            seqs.append(seq)
            self.waiting[seq] = None
        self.requests[request_id] = Request(gateway_id, seqs, len(seqs))

    def abort_request(self, request_id: str, index: int | None = None) -> bool:
        """Idempotent; False when the request is unknown or finished. index: only that one of the request's n
        sequences, whose last delta ("abort") comes out of the next update() since its siblings go on. A whole
        request aborted gives no more deltas: whoever aborted it is done with it."""
        req = self.requests.get(request_id)
        if req is None:
            return False
        if index is None:
            for seq in req.seqs:
                if seq.status is not SeqStatus.FINISHED:
                    self._finish(seq, "abort")
            if self._aborted:
                self._aborted = [d for d in self._aborted if d.request_id != request_id]
        elif 0 <= index < len(req.seqs) and req.seqs[index].status is not SeqStatus.FINISHED:
            seq = req.seqs[index]
            self._finish(seq, "abort")
            self._aborted.append(self._delta(seq, []))
        return True

    def num_unfinished(self, request_id: str) -> int:
        req = self.requests.get(request_id)
        return 0 if req is None else req.num_unfinished

    def has_work(self) -> bool:
        # Aborted sequences' last deltas ride on the next step's update; alone they are no reason to schedule.
        return bool(self.waiting or self.running or self._forget_on_runner)

    @property
    def can_schedule(self) -> bool:
        """A plan may go out now: there is work, and fewer than max_inflight plans are unanswered."""
        return len(self.inflight) < self.max_inflight and self.has_work()

    # ------------------------------------------------------------------ one step

    def schedule(self) -> StepPlan | None:
        """The next plan, or None when nothing can run (or max_inflight plans are out already).

        Decodes first, all of them: every running sequence with one token to run (a decode, or a prompt's
        last token) is in the step, whatever the token budget, so no decode ever waits behind a prompt. Then
        prompt chunks into the room that is left: max_num_batched_tokens minus the decodes, and at most
        max_prefill_tokens (when set), so that a step's time stays bounded however many prompts wait.
        Running sequences' next chunks go first (oldest first), then waiting prompts in arrival order,
        each cut to the room left."""
        if len(self.inflight) >= self.max_inflight:
            return None
        scheduled: list[tuple[Sequence, int]] = []
        prefilling: list[Sequence] = []
        preempted = False
        for seq in list(self.running):  # oldest first
            if seq.status is not SeqStatus.RUNNING:
                continue  # preempted to make room for an older one
            num_new = self._unscheduled(seq)
            if num_new <= 0 or self._done_when_pending_arrive(seq):
                continue
            if num_new > 1:
                prefilling.append(seq)
                continue
            # Every sequence visited so far is older, so the newest running one is never scheduled yet.
            while not self.blocks.allocate_slots(seq, 1):
                victim, _ = self.running.popitem()  # the newest goes first
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq.status is SeqStatus.RUNNING:
                scheduled.append((seq, 1))
        room = self.max_num_batched_tokens - len(scheduled)
        if self.max_prefill_tokens:
            room = min(room, self.max_prefill_tokens)
        for seq in prefilling:
            if room <= 0:
                break
            if seq.status is not SeqStatus.RUNNING:
                continue
            num_new = min(self._unscheduled(seq), room)
            preempted |= self._make_room(seq, num_new, scheduled)
            if seq.status is SeqStatus.RUNNING:
                scheduled.append((seq, num_new))
                room -= num_new
        # Blocks are short: let the preempted catch up before admitting more, unless nothing runs at all.
        if not preempted or not scheduled:
            self._admit_waiting(scheduled, room)
        if not scheduled and not self._forget_on_runner:
            return None
        return self._build_plan(scheduled)

    def _make_room(self, seq: Sequence, num_new: int, scheduled: list[tuple[Sequence, int]]) -> bool:
        """Blocks for a prompt chunk of a running sequence, preempting the newest running sequences not in this
        step (seq itself last: then it waits); True when something was preempted."""
        if self.blocks.allocate_slots(seq, num_new):
            return False
        taken = {s for s, _ in scheduled}
        while True:
            victim = next(s for s in reversed(self.running) if s not in taken)
            del self.running[victim]
            self._preempt(victim)
            if victim is seq or self.blocks.allocate_slots(seq, num_new):
                return True

    @staticmethod
    def _unscheduled(seq: Sequence) -> int:
        return seq.num_tokens + seq.num_pending - seq.num_computed_tokens

    def _done_when_pending_arrive(self, seq: Sequence) -> bool:
        """Finished by length once its in-flight tokens land: another step would be wasted."""
        if not seq.num_pending:
            return False
        return (seq.num_output_tokens + seq.num_pending >= seq.params.max_tokens
                or seq.num_tokens + seq.num_pending >= self.max_model_len)

    def _admit_waiting(self, scheduled: list[tuple[Sequence, int]], budget: int) -> None:
        held_back = []
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = next(iter(self.waiting))
            leader = seq.leader
            # the leader's prompt blocks are committed when its first token comes back
            if leader is not None and leader.status is not SeqStatus.FINISHED and leader.num_output_tokens == 0:
                del self.waiting[seq]
                held_back.append(seq)  # share the leader's prompt blocks once cached
                continue
            if self.grammar_gate.must_wait(seq.grammar_key, busy=bool(self.running)):
                del self.waiting[seq]
                held_back.append(seq)  # its grammar compiles on the runners' threads meanwhile
                continue
            fresh = not seq.block_table
            # a prompt still to be scored is computed whole: the prefix cache has K/V, not logprobs
            if fresh and (seq.prompt_scores is None or seq.prompt_scores.complete):
                self.blocks.attach_cached_prefix(seq)
            num_new = min(self._unscheduled(seq), budget)
            if not self.blocks.allocate_slots(seq, num_new):
                if fresh:
                    self.blocks.free(seq)
                break
            if fresh and seq.num_output_tokens == 0:
                self.prefix_queried_tokens += seq.num_prompt_tokens
                self.prefix_hit_tokens += seq.num_cached_tokens
                if not seq.scheduled_at:
                    seq.scheduled_at = time.monotonic()
                    self.prefilling[seq] = None
            del self.waiting[seq]
            seq.status = SeqStatus.RUNNING
            self.running[seq] = None
            scheduled.append((seq, num_new))
            budget -= num_new
        for seq in reversed(held_back):
            self._to_queue_front(seq)

    def _to_queue_front(self, seq: Sequence) -> None:
        self.waiting[seq] = None
        self.waiting.move_to_end(seq, last=False)

    def _preempt(self, seq: Sequence) -> None:
        """seq has left running already."""
        self.blocks.free(seq)
        seq.blocks_on_runner = 0
        seq.status = SeqStatus.WAITING
        self._to_queue_front(seq)
        self.num_preemptions += 1

    def _build_plan(self, scheduled: list[tuple[Sequence, int]]) -> StepPlan:
        step_id = self._next_step_id
        self._next_step_id += 1
        forget, self._forget_on_runner = self._forget_on_runner, []
        plan, num_tokens = build_step_plan(step_id, scheduled, self.eos_token_ids, forget)
        plan.grammars_to_compile = self.grammar_gate.take_outgoing()
        self.timings.step_tokens.observe(num_tokens)
        self.inflight.append(InflightStep(step_id, scheduled))
        return plan

    def update(self, result: StepResult) -> list[SeqDelta]:
        """Apply rank 0's sampled tokens for the oldest plan in flight; return what each sequence gained (and
        which finished). A result for any other step (unknown, or out of order) is dropped and gives nothing."""
        if result.grammars_compiled:
            self.grammar_gate.compiled(result.grammars_compiled)
        step = self.inflight[0] if self.inflight else None
        if step is None or result.step_id != step.step_id:
            log.warning("dropped a result for step %s (expected %s)", result.step_id,
                        None if step is None else step.step_id)
            return []
        self.inflight.popleft()
        sampled = dict(zip(unpack_ids(result.seq_ids).tolist(), unpack_ids(result.token_ids).tolist()))
        logprobs = {lp.seq_id: lp for lp in result.logprobs}
        scores = {p.seq_id: p for p in result.prompt_logprobs}
        deltas, self._aborted = self._aborted, []
        if self.prefilling:
            self._first_tokens(sampled)
        for seq, n in step.scheduled:
            if seq.status is SeqStatus.FINISHED:
                continue  # aborted (or finished by an earlier step) while the step ran
            if scores and seq.prompt_scores is not None and seq.seq_id in scores:  # a step without: one test
                seq.prompt_scores.add(scores[seq.seq_id])
            token = sampled.get(seq.seq_id)
            if token is not None:
                seq.token_ids.append(token)
                seq.num_pending -= 1
            if seq.status is SeqStatus.RUNNING:  # not preempted meanwhile
                self.blocks.commit_full_blocks(seq)
            if token is None:
                if seq.params.max_tokens == 0 and seq.prompt_scores.complete:  # scored: nothing to generate
                    self._finish(seq, "length")
                    deltas.append(self._delta(seq, []))
                continue
            reason = self._finish_reason(seq, token)
            if reason:
                self._finish(seq, reason)
            lp = logprobs.get(seq.seq_id)
            deltas.append(self._delta(seq, [token], [lp] if lp is not None else []))
        return deltas

    def _first_tokens(self, sampled: dict[int, int]) -> None:
        """Stamp the sequences whose first token this step brought (per step, over the prefilling only)."""
        now = time.monotonic()
        for seq in [s for s in self.prefilling if s.seq_id in sampled]:
            seq.first_token_at = now
            del self.prefilling[seq]

    def _finish_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.params
        if seq.num_output_tokens > p.min_tokens:
            if (token in self.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids:
                return "stop"
        if seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.status is SeqStatus.RUNNING:
            del self.running[seq]
        elif seq.status is SeqStatus.WAITING:
            del self.waiting[seq]
        self.blocks.free(seq)
        seq.status, seq.finish_reason = SeqStatus.FINISHED, reason
        self.prefilling.pop(seq, None)
        self.timings.finished(seq, time.monotonic())
        if seq.known_to_runner:
            self._forget_on_runner.append(seq.seq_id)
        self.num_finished += 1
        req = self.requests[seq.request_id]
        req.num_unfinished -= 1
        if not req.num_unfinished:
            del self.requests[seq.request_id]

    @staticmethod
    def _delta(seq: Sequence, tokens: list[int], logprobs: list[SeqLogprobs] = ()) -> SeqDelta:
        delta = SeqDelta(seq.request_id, seq.gateway_id, seq.index, pack_ids(tokens), seq.finish_reason,
                         list(logprobs), seq.num_prompt_tokens, seq.num_output_tokens, seq.num_cached_tokens)
        scores = seq.prompt_scores
        if scores is not None and not scores.sent and scores.complete:  # with the first token: once
            delta.prompt_logprobs = scores.merged(seq.seq_id)
            scores.sent, scores.parts = True, []
        return delta

    def stats(self) -> SchedulerCounters:
        return SchedulerCounters(num_running=len(self.running), num_waiting=len(self.waiting),
                                 num_requests=len(self.requests), num_free_blocks=self.blocks.num_free_blocks,
                                 num_total_blocks=self.blocks.num_blocks, num_preemptions=self.num_preemptions,
                                 prefix_queried_tokens=self.prefix_queried_tokens,
                                 prefix_hit_tokens=self.prefix_hit_tokens, num_finished=self.num_finished)

