"""The same process set under supervisord (supervisord -c supervisord.conf), checked with the openai client."""
from __future__ import annotations

import os
import shutil
import signal
import time

import pytest
from _checks import OpenAIClientChecks
from _pipeline import REPO, VENV_BIN, Server, alive, base_env, free_port, get, metric

SUPERVISORD = shutil.which("supervisord", path=VENV_BIN) or shutil.which("supervisord")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    assert SUPERVISORD is not None, "supervisord is missing: install the test extras (make test does)"
    tmp = tmp_path_factory.mktemp("supervisord")
    port = free_port()
    env = base_env(FERRY_PORT=port, FERRY_RUN_DIR=tmp / "run", FERRY_PEER_TIMEOUT=3)
    s = Server([SUPERVISORD, "-c", os.path.join(REPO, "supervisord.conf")], port, str(tmp / "supervisord.log"), env)
    try:
        yield s.wait_ready()
    finally:
        s.stop()


class TestOpenAIClient(OpenAIClientChecks):
    pass


def test_numprocs_tokenizers_both_work(server):
    text = get(server.url + "/metrics")[1]
    handled = [metric(text, "ferry_tokenizer_requests_handled", f'tokenizer="{i}"') for i in (0, 1)]
    assert all(h and h > 0 for h in handled), handled


def _children(pid: int) -> list[int]:
    """The processes whose parent is pid (a /proc scan)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return out


def test_sigkill_to_supervisord_leaves_no_process(server):
    """Last: it takes the server down. Every service dies with its parent (services.runtime.die_with_parent)."""
    children = _children(server.proc.pid)
    assert len(children) >= 6, children  # runner, scheduler, detokenizer, two tokenizers, gateway
    os.kill(server.proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    while any(alive(pid) for pid in children):
        assert time.monotonic() - killed < 5, [pid for pid in children if alive(pid)]
        time.sleep(0.1)
    print(f"every service gone {time.monotonic() - killed:.2f}s after supervisord was killed")
