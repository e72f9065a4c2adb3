"""A runner rank's logic: the scheduler session handshake, the stuck-step rule, and running plans.

No sockets here: the plan reader thread hands every message and every silence to on_message() /
on_silence(), the heartbeat thread sends ready(), the main thread loops over next_plan() and step(),
and time is passed in, so tests drive it with fakes. The decisions that end the process come back
as exit codes; services.runner.__main__ does the exiting.
"""
from __future__ import annotations

import logging
import queue
import time
import uuid
from typing import Protocol

from services.runner.runner_status import RunnerMeter
from shared.messages import RunnerReady, SchedulerPing, StepPlan, StepResult

EXIT_STEP_FAILED = 1
EXIT_SESSION_CHANGED = 3
EXIT_SCHEDULER_SILENT = 4


class Outbox(Protocol):
    def to_scheduler(self, result: StepResult) -> None: ...


class RunnerService:
    """The one owner of this rank's identity (instance), its scheduler session and whether a step runs.

    Three threads share it: the plan reader (on_message, on_silence), the heartbeat thread (ready) and
    the main thread (next_plan, step). Each field has one writer: session and last_heard the reader,
    busy_since the main thread.
    """

    def __init__(self, runner, out: Outbox, rank: int, pid: int, peer_timeout: float, now: float,
                 instance: str | None = None, session_grace: float = 0.0, trace=None):
        self.runner = runner  # engine.model_runner.ModelRunner, or a fake with the same few members
        self.out = out  # step results; only rank 0 sends them
        self.rank, self.pid = rank, pid
        self.num_kv_blocks = runner.num_kv_blocks  # fixed once the model and its KV cache are loaded
        self.instance = instance or uuid.uuid4().hex  # new on every start: the scheduler tells restarts apart
        self.peer_timeout = peer_timeout
        self.log = logging.getLogger(f"ferry.runner.{rank}")
        self.session = ""  # the scheduler session this rank joined; "" until its first ping
        self.busy_since: float | None = None  # set while the main thread executes a plan
        self.last_heard = now
        # A ping of another session is believed only once our own session has been silent this long: the real
        # scheduler pings every heartbeat_interval, so a forged ping cannot end a healthy rank.
        self.session_grace = session_grace
        self.last_own_ping = now
        self.last_step_id = -1  # the newest plan submitted: what a failed flush reports
        self.stepped = False  # set by the main thread once a plan ran: from then on this rank holds state
        self.plans: queue.Queue[StepPlan] = queue.Queue()  # reader thread -> main thread
        self.meter = RunnerMeter(rank, runner)  # steps, step time, idle share for /metrics (issue 16)
        # issue 17, --trace-first-token: hops of the steps that start sequences (their first tokens), else None
        self.trace = trace
        self.traced_steps: set[int] = set()  # main thread: traced steps whose results have not gone out
        self.pending_prompt = False  # main thread: the outstanding step carried prompt tokens

    # ------------------------------------------------------------------ heartbeat thread

    def ready(self) -> RunnerReady:
        """What the heartbeat says: KV capacity, and the session heard last (proves the plan socket works)."""
        return RunnerReady(self.rank, self.pid, self.num_kv_blocks, self.instance, self.session, self.meter.status())

    # ------------------------------------------------------------------ plan reader thread

    def on_message(self, msg, now: float) -> int | None:
        """A ping or a plan from the scheduler; returns an exit code when the process must end."""
        self.last_heard = now
        if isinstance(msg, SchedulerPing):
            if self.session and msg.session != self.session:
                if now - self.last_own_ping < self.session_grace:
                    self.log.warning("ignored a ping of session %.12s: session %.12s is alive", msg.session,
                                     self.session)
                    return None
                if not self.stepped and self.busy_since is None:  # no plan run: no state to lose (a fresh group)
                    self.log.info("joined scheduler session %.12s in place of %.12s", msg.session, self.session)
                    self.session, self.last_own_ping = msg.session, now
                    return None
                # A new scheduler session: our per-sequence state (and maybe our group) is dead.
                self.log.warning("scheduler session changed%s; exiting so that a clean runner takes over",
                                 " during a step" if self.busy_since is not None else "")
                return EXIT_SESSION_CHANGED
            self.session, self.last_own_ping = msg.session, now
        elif self.session and msg.session == self.session:  # before our handshake, or another session's: not ours
            if self.trace is not None and msg.new_seqs:
                self.trace.step_hop(msg.step_id, "run_plan_in")
            self.plans.put(msg)
        elif self.session:
            self.log.warning("dropped plan %s of session %.12s (ours is %.12s)", msg.step_id, msg.session,
                             self.session)
        return None

    def on_silence(self, now: float) -> int | None:
        """Nothing came for a poll interval. A step that outlives a scheduler silent for peer_timeout can
        only be stuck (in a collective with a dead peer), and nobody would use its result: exit then.
        Silence while idle is fine: the runner waits for its scheduler to come back."""
        busy = self.busy_since
        if busy is not None and now - busy > self.peer_timeout and now - self.last_heard > self.peer_timeout:
            self.log.error("step blocked for %.1fs with the scheduler silent for %.1fs; exiting",
                           now - busy, now - self.last_heard)
            return EXIT_SCHEDULER_SILENT
        return None

    # ------------------------------------------------------------------ main thread

    def next_plan(self, poll: float = 0.0002) -> StepPlan | None:
        """The next plan; None when a step is outstanding and its GPU work ends before one arrives (then its
        result goes out at once). While the GPU runs a step, a plan that arrives is launched behind it, so
        the GPU goes from one step to the next without waiting for the host."""
        if not self.runner.has_pending:
            try:
                return self.plans.get(timeout=1.0)  # a timeout keeps SIGTERM/SIGINT handled promptly
            except queue.Empty:
                return None
        while True:
            try:
                return self.plans.get(timeout=poll)
            except queue.Empty:
                if self.runner.pending_done():
                    return None

    def step(self, plan: StepPlan | None, now: float) -> int | None:
        """Submit a plan (None: flush the outstanding step) and send rank 0's result. On failure the rank's
        state is suspect (a peer may be gone): rank 0 reports the error to the scheduler, and the exit code
        returned ends every rank so that the supervisor restarts it; the other ranks fail their next
        collective or see the new session."""
        self.busy_since, started = now, time.monotonic()
        if plan is not None:
            self.last_step_id, self.stepped = plan.step_id, True
        traced = self.trace is not None and plan is not None and bool(plan.new_seqs)
        if traced:
            self.trace.step_hop(plan.step_id, "run_step_start")
            if self.rank == 0:  # the rank that sends results
                self.traced_steps.add(plan.step_id)
        try:
            if plan is not None and self.pending_prompt and self.runner.pending_done():
                # The outstanding step carried prompt tokens (first tokens, issue 17) and its work is done: its
                # result goes out before the next step is launched, not after (on the CPU that launch is the
                # whole next forward). Decode steps keep launch-then-finish: the GPU never waits for the host.
                self._send(self.runner.flush())
            result = self.runner.submit(plan) if plan is not None else self.runner.flush()
        except Exception as e:
            self.log.exception("step %d failed", self.last_step_id)
            if self.rank == 0:
                # the scheduler fails the engine on an error result of its session for a step in flight
                self.out.to_scheduler(self._signed(StepResult(self.last_step_id, b"", b"",
                                                              error=f"{type(e).__name__}: {e}")))
            return EXIT_STEP_FAILED
        self.busy_since = None
        # packed int32 columns: more token ids than sequences means some sequence ran a prompt chunk
        self.pending_prompt = plan is not None and len(plan.token_ids) > len(plan.seq_ids)
        self.meter.step_done(time.monotonic() - started)
        if traced:
            self.trace.step_hop(plan.step_id, "run_submitted")
        self._send(result)
        while self.runner.finished_runs:
            self.log.info("%s", self.runner.finished_runs.pop(0))
        return None

    def _send(self, result: StepResult | None) -> None:
        if self.trace is not None and result is not None and result.step_id in self.traced_steps:
            self.traced_steps.discard(result.step_id)
            self.trace.step_hop(result.step_id, "run_result_out")
        if self.rank == 0 and result is not None:
            self.out.to_scheduler(self._signed(result))

    def _signed(self, result: StepResult) -> StepResult:
        result.session, result.rank, result.instance = self.session, self.rank, self.instance
        return result
