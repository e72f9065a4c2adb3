"""The scheduler's hops of issue 17's first-token trace (--trace-first-token; shared/first_token_trace.py).

It follows each traced request from its arrival to the plan that samples its first token, names that plan's
step (the runner logs its own hops by step), and logs when that step's result comes back and when the token
leaves for the detokenizer. Only built when tracing is on; the service checks for None once per request,
plan and result.
"""
from __future__ import annotations

from shared.codec import unpack_ids
from shared.first_token_trace import FirstTokenTrace
from shared.messages import StepPlan, StepResult


class SchedulerHops:
    def __init__(self, trace: FirstTokenTrace):
        self.trace = trace
        self.awaiting_plan: dict[int, str] = {}  # seq id of a request's first choice -> request id
        self.awaiting_result: dict[int, list[str]] = {}  # step id -> requests whose first token it samples

    def arrived(self, rid: str) -> None:
        self.trace.hop(rid, "sched_in")

    def admitted(self, rid: str, first_seq_id: int) -> None:
        self.trace.hop(rid, "sched_admitted")
        self.awaiting_plan[first_seq_id] = rid

    def planned(self, plan: StepPlan) -> None:
        """Just before the plan goes to the ranks (every "out" hop is stamped before its send)."""
        if not self.awaiting_plan:
            return
        for sid, samples in zip(unpack_ids(plan.seq_ids).tolist(), plan.sample_mask):
            rid = self.awaiting_plan.pop(sid, None) if samples else None
            if rid is not None:
                self.trace.hop(rid, "sched_plan_out", plan.step_id)
                self.awaiting_result.setdefault(plan.step_id, []).append(rid)

    def result_in(self, result: StepResult) -> list[str]:
        rids = self.awaiting_result.pop(result.step_id, [])
        for rid in rids:
            self.trace.hop(rid, "sched_result_in", result.step_id)
        return rids

    def tokens_out(self, rids: list[str]) -> None:
        for rid in rids:
            self.trace.hop(rid, "sched_tokens_out")

    def dropped(self, rid: str) -> None:
        """The request was aborted before its first plan: stop waiting for it (else its entry stays for good)."""
        for sid in [sid for sid, r in self.awaiting_plan.items() if r == rid]:
            del self.awaiting_plan[sid]

    def forget(self) -> None:
        """The engine was reset: what was awaited will not come."""
        self.awaiting_plan.clear()
        self.awaiting_result.clear()
