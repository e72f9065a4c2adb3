"""The detokenizer's logic: per-request decoders, stop strings, outgoing messages, heartbeats.

No sockets here. Detokenizer is the bookkeeping: it takes decoded messages and returns (gateway_id, message)
pairs to send and what to abort in the engine: (request id, choice index), index -1 for the whole request.
DetokenizerService routes those through an Outbox; the process around it (services.detokenizer.__main__)
only moves frames.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from services.detokenizer.incremental import IncrementalDecoder, StopChecker
from services.detokenizer.logprob_text import AlignedLogprobs, prompt_token_logprobs
from shared.codec import pack_ids, unpack_f32, unpack_ids
from shared.messages import (
    AbortRequest,
    ChoiceDelta,
    DetokRegister,
    Heartbeat,
    RequestError,
    RequestOutput,
    SeqDelta,
    TokenBatch,
    TokenLogprob,
    WorkerStatus,
)
from shared.output_batch import RequestOutputs

log = logging.getLogger("ferry.detokenizer")
MAX_CHOICES = 1 << 16  # choices per request the scheduler sends at most (engine.scheduler.MAX_N); more is forged


@dataclass(slots=True)
class _Choice:
    decoder: IncrementalDecoder
    stopper: StopChecker
    finished: bool = False
    stopped_here: bool = False  # ended by a stop string: the engine does not know yet
    aligned: AlignedLogprobs | None = None  # choices that ask for logprobs


@dataclass(slots=True)
class _Request:
    reg: DetokRegister
    choices: list[_Choice] = field(default_factory=list)
    prompt_ids: list[int] | None = None  # echo or prompt logprobs: the whole prompt (issue 14)
    echo_sent: bool = False


class Detokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.requests: dict[str, _Request] = {}

    def register(self, reg: DetokRegister) -> None:
        if reg.request_id in self.requests or not 1 <= reg.n <= MAX_CHOICES:
            log.warning("dropped a registration of %s (n=%d): already registered, or implausible", reg.request_id,
                        reg.n)
            return
        tail = unpack_ids(reg.prompt_tail).tolist()
        choices = [_Choice(IncrementalDecoder(self.tokenizer, tail, reg.skip_special_tokens),
                           StopChecker(reg.stop, reg.include_stop_str_in_output),
                           aligned=AlignedLogprobs() if reg.logprobs is not None and reg.logprobs_follow_text else None)
                   for _ in range(max(1, reg.n))]
        whole = reg.echo or reg.prompt_logprobs is not None
        self.requests[reg.request_id] = _Request(reg, choices, tail if whole else None)
        log.debug("%s registered for gateway %d (n=%d)", reg.request_id, reg.gateway_id, reg.n)

    def fail(self, err: RequestError) -> list[tuple[int, object]]:
        """An error from upstream: forget the request and pass the error on to its gateway."""
        self.requests.pop(err.request_id, None)
        return [(err.gateway_id, err)]

    def on_batch(self, batch: TokenBatch) -> tuple[list[tuple[int, RequestOutput]], list[tuple[str, int]]]:
        by_request: dict[str, RequestOutput] = {}
        aborts: list[tuple[str, int]] = []
        for d in batch.deltas:
            req = self.requests.get(d.request_id)
            if req is None or not 0 <= d.index < len(req.choices):
                continue  # finished here already (stop string) or never registered
            choice = req.choices[d.index]
            if choice.finished:
                continue
            out = by_request.get(d.request_id)
            if out is None:
                out = by_request[d.request_id] = RequestOutput(
                    d.request_id, req.reg.gateway_id, [], d.prompt_tokens, d.cached_tokens)
                if req.prompt_ids is not None:
                    self._prompt_info(req, out)
            if d.prompt_logprobs is not None and req.prompt_ids:
                out.prompt_logprobs = prompt_token_logprobs(self._piece, req.prompt_ids, d.prompt_logprobs)
                out.prompt_token_ids = pack_ids(req.prompt_ids)
            out.choices.append(self._step(req, choice, d))
            # Ended here by a stop string: the engine does not know, and must stop generating for it (the
            # whole request once this was its last choice; earlier stopped siblings were aborted one by one).
            if all(c.finished for c in req.choices):
                del self.requests[d.request_id]
                log.debug("%s done", d.request_id)
                if choice.stopped_here:
                    aborts.append((d.request_id, -1))
            elif choice.stopped_here:
                aborts.append((d.request_id, d.index))
        return [(o.gateway_id, o) for o in by_request.values()], aborts

    def _step(self, req: _Request, choice: _Choice, d: SeqDelta) -> ChoiceDelta:
        ids = unpack_ids(d.token_ids).tolist()
        text = choice.decoder.push(ids)
        if d.finish_reason is not None:
            text += choice.decoder.flush()
        decoded = text
        text, stopped = choice.stopper.push(text)
        finish = d.finish_reason
        if stopped:
            finish = "stop"
            choice.stopped_here = d.finish_reason is None
        elif finish is not None:
            text += choice.stopper.flush()
        choice.finished = finish is not None
        logprobs = self._logprobs(d, ids) if req.reg.logprobs is not None else []
        if choice.aligned is not None:  # chat: each token's logprob goes out with its text (and not without it)
            choice.aligned.decoded_text(logprobs, decoded)
            logprobs = choice.aligned.released_text(text, choice.finished)
        return ChoiceDelta(d.index, text, finish, d.completion_tokens, logprobs, pack_ids(ids))

    def _prompt_info(self, req: _Request, out: RequestOutput) -> None:
        """The request's first output carries its prompt's text when it asked for echo."""
        if req.reg.echo and not req.echo_sent:
            req.echo_sent = True
            out.prompt_text = self.tokenizer.decode(req.prompt_ids, skip_special_tokens=req.reg.skip_special_tokens,
                                                    clean_up_tokenization_spaces=False)

    def _logprobs(self, d: SeqDelta, ids: list[int]) -> list[TokenLogprob]:
        out = []
        for tok, lp in zip(ids, d.logprobs):
            top_ids = unpack_ids(lp.top_token_ids).tolist()
            out.append(TokenLogprob(self._piece(tok), float(lp.token_logprob),
                                    [self._piece(t) for t in top_ids],
                                    unpack_f32(lp.top_logprobs).tolist()))
        return out

    def _piece(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def by_gateway(outputs: list[tuple[int, RequestOutput]]) -> dict[int, list[RequestOutput]]:
    """A step's outputs grouped by the gateway they go to, each group in the batch's order."""
    groups: dict[int, list[RequestOutput]] = {}
    for gid, out in outputs:
        group = groups.get(gid)
        if group is None:
            group = groups[gid] = []
        group.append(out)
    return groups


class Outbox(Protocol):
    def to_scheduler(self, msg: AbortRequest | Heartbeat) -> None: ...
    def to_gateway(self, gateway_id: int, msg: RequestOutputs | RequestError) -> None: ...


class DetokenizerService:
    """The detokenizer process: each message through Detokenizer, what it returns out; what its heartbeat says."""

    def __init__(self, tokenizer, out: Outbox, pid: int, trace=None):
        self.detok = Detokenizer(tokenizer)
        self.out = out
        self.pid = pid
        self.trace = trace  # shared.first_token_trace.FirstTokenTrace with --trace-first-token, else None
        self.awaiting_first: set[str] = set()  # tracing: registered requests whose first tokens have not come

    def on_message(self, msg) -> None:
        try:
            if isinstance(msg, DetokRegister):
                self.detok.register(msg)
                if self.trace is not None:
                    self.awaiting_first.add(msg.request_id)
            elif isinstance(msg, TokenBatch):
                firsts = self._first_tokens_in(msg) if self.trace is not None else ()
                outputs, aborts = self.detok.on_batch(msg)
                for rid in firsts:
                    self.trace.hop(rid, "detok_out")
                for gid, outs in by_gateway(outputs).items():  # one frame per gateway per step, not per request
                    self.out.to_gateway(gid, RequestOutputs(gid, outs))
                for rid, index in aborts:  # a stop string ended it: the engine can stop generating
                    self.out.to_scheduler(AbortRequest(rid, -1, "stop", index))
            elif isinstance(msg, RequestError):
                self.awaiting_first.discard(msg.request_id)
                for gid, out in self.detok.fail(msg):
                    self.out.to_gateway(gid, out)
        except Exception:  # one bad message must not take the process down
            log.exception("dropped a message that could not be handled: %r", type(msg).__name__)

    def _first_tokens_in(self, batch: TokenBatch) -> list[str]:
        """Tracing only: the requests whose first tokens this batch brings (each logged as it came in)."""
        firsts = []
        for d in batch.deltas:
            if d.request_id in self.awaiting_first:
                self.awaiting_first.discard(d.request_id)
                self.trace.hop(d.request_id, "detok_in")
                firsts.append(d.request_id)
        return firsts

    def heartbeat(self) -> Heartbeat:
        """What the heartbeat thread sends (services/heartbeat.py), also while a long batch decodes."""
        return Heartbeat("detokenizer", WorkerStatus(0, self.pid, requests_open=len(self.detok.requests)))
