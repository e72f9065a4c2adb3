"""Which tokenizer worker holds which request, so that a worker's death fails exactly the requests it took.

The gateway hands each request to one worker, round-robin over the workers that are connected. A request
sits with its worker until the worker passes it on to the scheduler; a worker killed meanwhile takes the
request with it, and the client would wait forever while the other workers keep the server healthy. So
the pool remembers each request's worker until the request's first reply, and reads the scheduler's
stats: a worker that drops out of them (silent for peer_timeout) or shows a new process id (restarted)
has lost whatever it held. No sockets here: `send_to(worker id, message) -> bool` does the sending.
"""
from __future__ import annotations

from shared.messages import WorkerStatus


class TokenizerPool:
    def __init__(self, send_to, worker_ids=()):
        self.send_to = send_to
        self.workers: list[int] = []
        self.pids: dict[int, int] = {}  # the process id the scheduler last saw for each worker
        self.holding: dict[str, int] = {}  # request id -> its worker, until the first reply
        self.next = 0
        for wid in worker_ids:
            self.add(wid)

    def add(self, wid: int) -> None:
        if wid not in self.workers:
            self.workers.append(wid)

    def send(self, request_id: str, msg) -> bool:
        """Give the request to the next connected worker; False when none takes it."""
        for _ in range(len(self.workers)):
            wid = self.workers[self.next % len(self.workers)]
            self.next += 1
            if self.send_to(wid, msg):
                self.holding[request_id] = wid
                return True
        return False

    def passed_on(self, request_id: str) -> None:
        """A reply came back (or the client went away): no worker holds the request any more."""
        self.holding.pop(request_id, None)

    def on_stats(self, tokenizers: list[WorkerStatus]) -> list[str]:
        """The scheduler's view of the workers (those heard from lately); returns the requests held by workers
        that died since the last view. New workers join the rotation."""
        pids = {w.id: w.pid for w in tokenizers}
        lost_workers = [wid for wid, pid in self.pids.items() if pids.get(wid) != pid]
        self.pids = pids
        for wid in pids:
            self.add(wid)
        lost = [rid for rid, wid in self.holding.items() if wid in lost_workers]
        for rid in lost:
            del self.holding[rid]
        return lost
