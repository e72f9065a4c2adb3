"""Every process the scheduler hears heartbeats from, dead ones too: what /metrics says about their health.

A process is up while it has beaten within peer_timeout (and, on one host, its pid is alive: a killed worker
shows at once). Expected processes (the tokenizer ids, the detokenizer, every runner rank) are listed before
they are first heard, as down, so that a worker that never came up is missing too. A new pid (a runner: a new
instance) under the same id counts a restart.
"""
from __future__ import annotations

from dataclasses import dataclass

from services.scheduler.checks import pid_alive
from shared.messages import ProcessHealth


@dataclass(slots=True)
class _Seen:
    identity: str = ""  # pid, or a runner's instance id
    pid: int = 0
    last_seen: float = -1.0
    restarts: int = 0


class ProcessBook:
    def __init__(self, peer_timeout: float, same_host: bool, expected: list[tuple[str, int]]):
        self.peer_timeout, self.same_host = peer_timeout, same_host
        self.seen: dict[tuple[str, int], _Seen] = {key: _Seen() for key in expected}

    def heard(self, service: str, pid_id: int, pid: int, now: float, identity: str = "") -> None:
        key = (service, pid_id)
        seen = self.seen.get(key)
        if seen is None:
            seen = self.seen[key] = _Seen()
        identity = identity or str(pid)
        if seen.identity and seen.identity != identity:
            seen.restarts += 1
        seen.identity, seen.pid, seen.last_seen = identity, pid, now

    def snapshot(self, now: float) -> list[ProcessHealth]:
        out = []
        for (service, pid_id), s in sorted(self.seen.items()):
            heard = s.last_seen >= 0
            age = now - s.last_seen if heard else -1.0
            up = heard and age <= self.peer_timeout and (not self.same_host or pid_alive(s.pid))
            out.append(ProcessHealth(service, pid_id, s.pid, up, age, s.restarts))
        return out
