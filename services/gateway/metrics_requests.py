"""This gateway's per-request series, named as vLLM's (ferry_X for vllm:X), each labelled model_name.

One RequestObserver per HTTP request. Its only per-output work is a clock read and, after the first output,
one append (the gap since the last); everything else (histogram buckets, counters) happens once when the
request ends. Per prompt of a request (a completions request may hold several): one time to first token,
one end-to-end latency, one inter-token gap per output after the first (an output is one engine step's
tokens for the prompt's choices: one token each), tokens counted per choice.
"""
from __future__ import annotations

import time
from collections import Counter

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from shared.buckets import (
    ITL_BUCKETS,
    N_BUCKETS,
    REQUEST_TIME_BUCKETS,
    TTFT_BUCKETS,
    BucketHistogram,
    buckets_1_2_5,
)
from shared.messages import RequestOutput

_HISTOGRAMS = {  # attribute: (exported name, help)
    "ttft": ("time_to_first_token_seconds", "Time from the HTTP request to its first output"),
    "itl": ("inter_token_latency_seconds", "Time between one output and the next of a request"),
    "tpot": ("request_time_per_output_token_seconds", "Decode time per output token after the first, per request"),
    "e2e": ("e2e_request_latency_seconds", "Time from the HTTP request to its last output"),
    "prompt_hist": ("request_prompt_tokens", "Prompt tokens per request"),
    "generation_hist": ("request_generation_tokens", "Generated tokens per request (all its choices)"),
    "params_n": ("request_params_n", "The n (choices) requested"),
    "params_max_tokens": ("request_params_max_tokens", "The max_tokens requested (left out: not observed)"),
}


class ModelSeries:
    """One model's request series at this gateway."""

    def __init__(self, max_model_len: int):
        token_buckets = buckets_1_2_5(max_model_len)
        self.ttft = BucketHistogram(TTFT_BUCKETS)
        self.itl = BucketHistogram(ITL_BUCKETS)
        self.tpot = BucketHistogram(ITL_BUCKETS)
        self.e2e = BucketHistogram(REQUEST_TIME_BUCKETS)
        self.prompt_hist = BucketHistogram(token_buckets)
        self.generation_hist = BucketHistogram(token_buckets)
        self.params_n = BucketHistogram(N_BUCKETS)
        self.params_max_tokens = BucketHistogram(token_buckets)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.finished: Counter[str] = Counter()  # finished_reason -> choices
        self.http: Counter[tuple[str, str]] = Counter()  # (endpoint, status) -> requests


class RequestMetrics:
    """Every model's series; a prometheus collector (registered in services.gateway.metrics.Metrics)."""

    def __init__(self, max_model_len: int = 0):
        self.max_model_len = max_model_len or 131072
        self.models: dict[str, ModelSeries] = {}

    def series(self, model: str) -> ModelSeries:
        s = self.models.get(model)
        if s is None:
            s = self.models[model] = ModelSeries(self.max_model_len)
        return s

    def collect(self):
        tokens = [CounterMetricFamily("ferry_prompt_tokens", "Prompt tokens of requests", labels=["model_name"]),
                  CounterMetricFamily("ferry_generation_tokens", "Tokens generated", labels=["model_name"])]
        success = CounterMetricFamily("ferry_request_success", "Choices finished, by finish reason",
                                      labels=["model_name", "finished_reason"])
        http = CounterMetricFamily("ferry_http_requests", "HTTP requests answered, by route and status",
                                   labels=["model_name", "endpoint", "status"])
        hists = {attr: HistogramMetricFamily("ferry_" + name, doc, labels=["model_name"])
                 for attr, (name, doc) in _HISTOGRAMS.items()}
        for model, s in sorted(self.models.items()):
            tokens[0].add_metric([model], s.prompt_tokens)
            tokens[1].add_metric([model], s.generation_tokens)
            for reason, count in sorted(s.finished.items()):
                success.add_metric([model, reason], count)
            for (endpoint, status), count in sorted(s.http.items()):
                http.add_metric([model, endpoint, status], count)
            for attr, family in hists.items():
                h: BucketHistogram = getattr(s, attr)
                family.add_metric([model], h.cumulative(), h.total)
        yield from tokens
        yield success
        yield http
        yield from hists.values()


class RequestObserver:
    """One HTTP generation request's timings: output() per output, finish() once."""

    __slots__ = ("series", "start", "first", "last", "gaps", "n", "max_tokens", "failed", "summary")

    def __init__(self, series: ModelSeries, num_prompts: int, n: int, max_tokens: int | None):
        self.series = series
        self.start = time.monotonic()
        self.first = [0.0] * num_prompts
        self.last = [0.0] * num_prompts
        self.gaps: list[float] = []
        self.n, self.max_tokens = n, max_tokens
        self.failed = False
        self.summary: dict = {}  # for the request log line, once finished

    def output(self, index: int, msg) -> None:
        if type(msg) is not RequestOutput:
            self.failed = True  # an error (RequestError)
            return
        now = time.monotonic()
        last = self.last[index]
        if last:
            self.gaps.append(now - last)
        else:
            self.first[index] = now
            self.series.ttft.observe(now - self.start)
        self.last[index] = now

    def finish(self, collector) -> None:
        """The request is over (answered, failed or abandoned): fold it into the series, once."""
        if self.summary:
            return
        s, n = self.series, self.n
        s.itl.observe_many(self.gaps)
        generated_all = 0
        reasons = []
        for i, first in enumerate(self.first):
            choices = range(i * n, (i + 1) * n)
            generated = sum(collector.completion_tokens[c] for c in choices)
            prompt = collector.prompt_tokens[i] if i < len(collector.prompt_tokens) else 0
            generated_all += generated
            s.prompt_tokens += prompt
            s.generation_tokens += generated
            if not first:
                continue  # never started: an error before any output
            finish = collector.sample_finish  # all samples (best_of answers with fewer)
            for c in choices:
                reason = finish[c] or ("error" if self.failed else "abort")
                s.finished[reason] += 1
                reasons.append(reason)
            if all(finish[c] for c in choices):
                last = self.last[i]
                s.e2e.observe(last - self.start)
                per_choice = generated / n
                if per_choice > 1:
                    s.tpot.observe((last - first) / (per_choice - 1))
                s.prompt_hist.observe(prompt)
                s.generation_hist.observe(generated)
                s.params_n.observe(n)
                if self.max_tokens is not None:
                    s.params_max_tokens.observe(self.max_tokens)
        firsts = [f for f in self.first if f]
        self.summary = {"prompt_tokens": sum(collector.prompt_tokens), "generated_tokens": generated_all,
                        "ttft": round(min(firsts) - self.start, 6) if firsts else None,
                        "finish_reason": ",".join(sorted(set(reasons))) or None}
