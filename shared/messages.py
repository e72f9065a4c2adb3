"""Every message type that crosses a ferry socket, defined once.

Each class is a slotted dataclass registered with a fixed tag (see shared/codec.py). Append new
fields at the end with a default; never reorder or reuse a tag. Token ids travel as packed int32
bytes (shared.codec.pack_ids / unpack_ids).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from shared.codec import message
from shared.errors import FerryError, HTTPError
from shared.sampling_params import SamplingParams

# The scheduler <-> runner step protocol (and the SamplingParams registration) lives in shared/step_messages.py;
# its types are imported here too, so that every message type can be imported from this one module.
from shared.step_messages import (  # noqa: F401
    GrammarSpec,
    NewSequence,
    PromptLogprobs,
    SeqLogprobs,
    StepPlan,
    StepResult,
)

# ---------------------------------------------------------------- service pipeline (tags 40-99)
# gateway -> tokenizer -> scheduler -> detokenizer -> gateway; heartbeats and stats beside them.


@message(40)
@dataclass(slots=True)
class TokenizeRequest:
    """gateway -> a tokenizer worker: exactly one of messages / prompt / prompt_token_ids is set."""

    request_id: str
    gateway_id: int
    params: SamplingParams
    messages: list[dict] | None = None  # chat: OpenAI message dicts, content a string or text parts
    prompt: str | None = None
    prompt_token_ids: bytes | None = None  # int32
    add_generation_prompt: bool = True
    chat_template_kwargs: dict = field(default_factory=dict)
    # issue 14: "" generate; "tokenize" / "detokenize" / "tokenizer_info" answer the gateway with a TokenizeReply
    task: str = ""
    continue_final_message: bool = False
    add_special_tokens: bool | None = None  # prompts: None as for generation (the tokenizer's default)
    tools: list[dict] = field(default_factory=list)  # issue 15: OpenAI tools, checked by the gateway, for the template
    grammar_param: str = ""  # issue 15: the request parameter params' grammar came from, named in a compile error


@message(41)
@dataclass(slots=True)
class EngineRequest:
    """tokenizer -> scheduler: a validated, tokenized request."""

    request_id: str
    gateway_id: int
    prompt_token_ids: bytes  # int32
    params: SamplingParams
    arrival_time: float = 0.0


@message(42)
@dataclass(slots=True)
class AbortRequest:
    """gateway or detokenizer -> scheduler; idempotent. index >= 0: only that choice of an n > 1 request (the
    detokenizer found a stop string in it while its siblings go on)."""

    request_id: str
    gateway_id: int = -1
    reason: str = "abort"
    index: int = -1


@message(56)
@dataclass(slots=True)
class WorkerStatus:
    """One tokenizer worker's or the detokenizer's own view of itself, sent in its heartbeat."""

    id: int  # tokenizer_id; 0 for the detokenizer
    pid: int  # a new pid under the same id: the worker restarted and lost what it held
    requests_handled: int = 0  # tokenizer: requests taken in
    errors: int = 0  # tokenizer: requests rejected
    requests_open: int = 0  # detokenizer: requests being decoded


@message(43)
@dataclass(slots=True)
class Heartbeat:
    """tokenizer workers and the detokenizer -> scheduler, every heartbeat_interval."""

    service: str  # "tokenizer" | "detokenizer"
    worker: WorkerStatus


@message(44)
@dataclass(slots=True)
class RunnerReady:
    """runner rank -> scheduler, every heartbeat_interval once the model is loaded."""

    rank: int
    pid: int
    num_kv_blocks: int
    instance: str  # new on every start: a restarted runner is told apart from the old one
    session: str = ""  # the scheduler session it last heard: proves the plan socket is connected
    status: RunnerStatus | None = None  # issue 16: step time, device busy time, GPU memory


@message(45)
@dataclass(slots=True)
class SchedulerPing:
    """scheduler -> each runner rank, every heartbeat_interval. A runner that sees the session
    change has per-sequence state from a dead scheduler: it exits so its supervisor restarts it."""

    session: str


@message(46)
@dataclass(slots=True)
class DetokRegister:
    """scheduler -> detokenizer, before any token of the request: how to decode and route it."""

    request_id: str
    gateway_id: int
    n: int
    prompt_tail: bytes  # int32: the last prompt tokens, context for the first output's leading space
    stop: list[str] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    logprobs: int | None = None
    prompt_logprobs: int | None = None  # issue 14; with echo or this, prompt_tail is the whole prompt
    echo: bool = False  # the first output carries the prompt's text
    logprobs_follow_text: bool = False  # chat: no logprob for text the answer leaves out (a stop string, EOS)


@message(47)
@dataclass(slots=True)
class SeqDelta:
    """One sequence's new tokens from one step, as engine.Scheduler.update returns them."""

    request_id: str
    gateway_id: int
    index: int
    token_ids: bytes  # int32
    finish_reason: str | None = None
    logprobs: list[SeqLogprobs] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    prompt_logprobs: "PromptLogprobs | None" = None  # issue 14: the whole prompt's, on the first delta of choice 0


@message(48)
@dataclass(slots=True)
class TokenBatch:
    """scheduler -> detokenizer: every output of one step."""

    deltas: list[SeqDelta]


@message(49)
@dataclass(slots=True)
class RequestError:
    """anyone -> the request's gateway (through the detokenizer from the scheduler): it failed. The fields of an
    OpenAI error object; build it from a FerryError (RequestError.of), never by hand."""

    request_id: str
    gateway_id: int
    status: int
    message: str
    type: str
    param: str | None = None
    code: str | None = None

    @classmethod
    def of(cls, request_id: str, gateway_id: int, err: FerryError) -> RequestError:
        return cls(request_id, gateway_id, err.status, err.message, err.type, err.param, err.code)

    def to_exception(self) -> FerryError:
        """The error again, for the gateway to answer with (a forged status falls back to 500)."""
        return HTTPError(self.status, self.message, self.type, self.param, self.code)


@message(50)
@dataclass(slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top_tokens: list[str] = field(default_factory=list)
    top_logprobs: list[float] = field(default_factory=list)
    rank: int = 0  # issue 14 (prompt logprobs): 1 + how many tokens were likelier; 0: not known
    top_token_ids: bytes = b""  # int32, beside top_tokens (prompt logprobs only)


@message(51)
@dataclass(slots=True)
class ChoiceDelta:
    index: int
    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0  # so far, for this choice
    logprobs: list[TokenLogprob] = field(default_factory=list)
    token_ids: bytes = b""  # int32


@message(52)
@dataclass(slots=True)
class RequestOutput:
    """detokenizer -> gateway: new text for one or more choices of a request."""

    request_id: str
    gateway_id: int
    choices: list[ChoiceDelta]
    prompt_tokens: int = 0
    cached_tokens: int = 0
    # issue 14, on a request's first output only: its prompt's text (echo), and its prompt tokens with their
    # logprobs (entry 0, the first token, has none: its logprob is NaN here and null in answers)
    prompt_text: str | None = None
    prompt_logprobs: list[TokenLogprob] | None = None
    prompt_token_ids: bytes = b""  # int32


@message(54)
@dataclass(slots=True)
class Tokenized:
    """tokenizer worker -> the request's gateway: the request went on to the scheduler (no worker holds it now)."""

    request_id: str
    gateway_id: int


@message(55)
@dataclass(slots=True)
class SchedulerCounters:
    """engine.Scheduler.stats(): the engine's queues, KV pool and counters since it started."""

    num_running: int = 0
    num_waiting: int = 0
    num_requests: int = 0
    num_free_blocks: int = 0
    num_total_blocks: int = 0
    num_preemptions: int = 0
    prefix_queried_tokens: int = 0
    prefix_hit_tokens: int = 0
    num_finished: int = 0


@message(53)
@dataclass(slots=True)
class EngineStats:
    """scheduler -> every gateway (PUB), about every second and after requests finish."""

    ready: bool  # runners announced, every peer heard from recently
    reason: str  # why not ready, for /health
    engine: SchedulerCounters | None  # None while no engine runs (runners not up, or after a failure)
    tokenizers: list[WorkerStatus]  # the workers heard from within peer_timeout
    time: float = 0.0
    max_model_len: int = 0
    num_active_requests: int = 0  # requests the scheduler process holds (not finished, not aborted)
    steps_in_flight: int = 0  # plans sent to the runners and not answered yet
    # issue 16 (metrics): engine-side histograms, every process's health, every runner rank's status
    histograms: list[BucketCounts] = field(default_factory=list)
    processes: list[ProcessHealth] = field(default_factory=list)
    runners: list[RunnerStatus] = field(default_factory=list)
    reporter_gateway: int = -1  # the one gateway that exports engine-wide series (the lowest live id)
    scheduler_pid: int = 0  # 0: these stats carry no metrics (the fields above are empty), keep the last ones


# ---------------------------------------------------------------- metrics (issue 16, tags 90-94)


@message(90)
@dataclass(slots=True)
class BucketCounts:
    """One histogram as shared.buckets.BucketHistogram holds it: counts per bucket (+Inf last), and the sum."""

    name: str  # exported as ferry_<name>
    bounds: list[float]
    counts: list[int]
    total: float


@message(91)
@dataclass(slots=True)
class ProcessHealth:
    """The scheduler's view of one process it hears heartbeats from (also dead ones: up is False)."""

    service: str  # gateway | tokenizer | detokenizer | runner
    id: int  # gateway id, tokenizer id, runner rank; 0 for the detokenizer
    pid: int
    up: bool
    seconds_since_heartbeat: float  # -1: never heard from
    restarts: int  # new pids (runners: new instances) seen under this id


@message(92)
@dataclass(slots=True)
class RunnerStatus:
    """A runner rank's own numbers, sent with every RunnerReady."""

    rank: int
    device: str  # cuda | cpu
    steps: int  # steps run since the process started
    step_seconds: float  # host time spent in those steps
    idle_share: float  # over the last heartbeat interval: device idle (CUDA events) or no step running (CPU)
    gpu_memory_used_bytes: int = 0  # 0 on the CPU
    gpu_memory_total_bytes: int = 0


# ---------------------------------------------------------------- issue 14: prompt logprobs, tokenize routes


@message(81)
@dataclass(slots=True)
class TokenizeReply:
    """tokenizer worker -> gateway: the answer to a TokenizeRequest with a task (/tokenize, /detokenize,
    /tokenizer_info): the ids exactly as a generation request would send them to the engine."""

    request_id: str
    gateway_id: int
    token_ids: bytes = b""  # int32
    token_strs: list[str] = field(default_factory=list)
    text: str = ""
    info: dict = field(default_factory=dict)
    max_model_len: int = 0
