"""Admission control: a bounded waiting queue and per-key rate limits, decided before a request is submitted.

Waiting requests are counted two ways and the larger wins: the requests this gateway has submitted that
have produced no output yet (exact, now: `EngineClient.num_pending`), and the engine's own waiting count
from the last `EngineStats` (about a second old, but it sees every gateway). Past --max-waiting-requests a
request gets 503 with Retry-After at once, and /health answers 503 "overloaded" so load balancers steer
away. Rate limits are token buckets per API key (requests, and prompt + generated tokens, per minute):
requests are counted as they are admitted, tokens once a request's usage is known, and a key in debt
gets 429 with Retry-After until its bucket refills.
"""
from __future__ import annotations

import math
import time

from shared.errors import Overloaded, RateLimited

MAX_BUCKETS = 10_000  # keys are the configured API keys, so this only bounds memory when a key list is huge


class Bucket:
    """Holds up to `per_minute`, refilled at per_minute / 60 a second; may go into debt (tokens are charged late)."""

    __slots__ = ("rate", "cap", "level", "at")

    def __init__(self, per_minute: int, now: float):
        self.rate, self.cap, self.level, self.at = per_minute / 60.0, float(per_minute), float(per_minute), now

    def refill(self, now: float) -> float:
        self.level = min(self.cap, self.level + (now - self.at) * self.rate)
        self.at = now
        return self.level

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` is available (0 when it is now)."""
        short = amount - self.refill(now)
        return 0.0 if short <= 0 else short / self.rate


class Admission:
    def __init__(self, settings, client, others=()):
        self.max_waiting = settings.max_waiting_requests
        self.rpm, self.tpm = settings.rate_limit_rpm, settings.rate_limit_tpm
        self.client = client
        self.others = tuple(others)  # the other models' clients (several models): waiting is counted over all
        self.requests: dict[str, Bucket] = {}
        self.tokens: dict[str, Bucket] = {}
        self.rejected = 0

    def num_waiting(self) -> int:
        return sum(self._waiting(c) for c in (self.client, *self.others))

    @staticmethod
    def _waiting(client) -> int:
        stats = client.stats
        engine = stats.engine.num_waiting if stats is not None and stats.engine is not None else 0
        return max(client.num_pending(), engine)

    def overloaded_reason(self) -> str | None:
        if self.max_waiting <= 0:
            return None
        waiting = self.num_waiting()
        if waiting < self.max_waiting:
            return None
        return f"overloaded: {waiting} requests are waiting (--max-waiting-requests {self.max_waiting})"

    def admit(self, key: str, now: float | None = None):
        """Raises Overloaded (503) or RateLimited (429), or counts the request against its key."""
        reason = self.overloaded_reason()
        if reason:
            self.rejected += 1
            raise Overloaded(f"The server is {reason}; retry later.", retry_after=1)
        now = time.monotonic() if now is None else now
        if self.tpm > 0:
            wait = self._bucket(self.tokens, key, self.tpm, now).wait_for(1, now)
            if wait > 0:
                raise RateLimited(f"Rate limit reached: {self.tpm} tokens per minute for this key.",
                                  retry_after=math.ceil(wait))
        if self.rpm > 0:
            bucket = self._bucket(self.requests, key, self.rpm, now)
            wait = bucket.wait_for(1, now)
            if wait > 0:
                raise RateLimited(f"Rate limit reached: {self.rpm} requests per minute for this key.",
                                  retry_after=math.ceil(wait))
            bucket.level -= 1

    def charge_tokens(self, key: str, tokens: int, now: float | None = None):
        """A finished request's prompt + generated tokens, against its key's tokens per minute."""
        if self.tpm > 0 and tokens > 0:
            now = time.monotonic() if now is None else now
            bucket = self._bucket(self.tokens, key, self.tpm, now)
            bucket.refill(now)
            bucket.level -= tokens

    @staticmethod
    def _bucket(buckets: dict[str, Bucket], key: str, per_minute: int, now: float) -> Bucket:
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= MAX_BUCKETS:
                buckets.clear()  # forgets debts; bounded memory matters more
            bucket = buckets[key] = Bucket(per_minute, now)
        return bucket
