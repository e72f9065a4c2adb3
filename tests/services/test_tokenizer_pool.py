"""The gateway's record of which tokenizer worker holds which request (services/gateway/tokenizer_pool.py)."""
from services.gateway.tokenizer_pool import TokenizerPool
from shared.messages import WorkerStatus


def view(pids: dict[int, int]) -> list[WorkerStatus]:
    """The tokenizers of one EngineStats: worker id -> its process id."""
    return [WorkerStatus(wid, pid) for wid, pid in pids.items()]


def make(up=(0, 1, 2)):
    sent = []

    def send_to(wid, msg):
        if wid not in up:
            return False  # not connected: the socket takes nothing
        sent.append((wid, msg))
        return True
    return TokenizerPool(send_to, [0, 1, 2]), sent


def test_round_robin_skips_workers_that_are_down():
    pool, sent = make(up=(0, 2))
    assert all(pool.send(f"r{i}", i) for i in range(4))
    assert [w for w, _ in sent] == [0, 2, 0, 2]
    assert pool.holding == {"r0": 0, "r1": 2, "r2": 0, "r3": 2}
    none, _ = make(up=())
    assert none.send("x", 0) is False and none.holding == {}


def test_a_dead_or_restarted_worker_fails_only_what_it_still_held():
    pool, _ = make()
    assert pool.on_stats(view({0: 10, 1: 11, 2: 12})) == []
    for i in range(6):
        pool.send(f"r{i}", i)  # r0, r3 -> 0; r1, r4 -> 1; r2, r5 -> 2
    pool.passed_on("r3")  # worker 0 handed it to the scheduler (or a reply came)
    pool.passed_on("r4")
    # worker 0 silent long enough to drop out of the stats, worker 1 restarted (new pid), worker 2 fine
    assert sorted(pool.on_stats(view({1: 21, 2: 12}))) == ["r0", "r1"]
    assert pool.holding == {"r2": 2, "r5": 2}
    assert pool.on_stats(view({1: 21, 2: 12})) == []  # reported once
    # worker 0 comes back, and a worker never configured joins the rotation
    assert pool.on_stats(view({0: 30, 1: 21, 2: 12, 5: 40})) == []
    assert pool.workers == [0, 1, 2, 5]
