"""The same process set under supervisord (supervisord -c supervisord.conf), checked with the openai client."""
from __future__ import annotations

import os
import shutil

import pytest

from _checks import check_chat, check_completion, check_concurrent_streams, check_stream
from _pipeline import REPO, VENV_BIN, Server, base_env, free_port, get, metric

SUPERVISORD = shutil.which("supervisord", path=VENV_BIN) or shutil.which("supervisord")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if SUPERVISORD is None:
        pytest.skip("supervisor is not installed")
    tmp = tmp_path_factory.mktemp("supervisord")
    port = free_port()
    env = base_env(FERRY_PORT=port, FERRY_RUN_DIR=tmp / "run", FERRY_PEER_TIMEOUT=3)
    s = Server([SUPERVISORD, "-c", os.path.join(REPO, "supervisord.conf")], port, str(tmp / "supervisord.log"), env)
    try:
        yield s.wait_ready()
    finally:
        s.stop()


def test_chat(server, llm, reference):
    check_chat(server, llm, reference)


def test_stream_with_usage(server, llm, reference):
    check_stream(server, llm, reference)


def test_completion(server, llm, reference):
    check_completion(server, llm, reference)


def test_eight_concurrent_streams(server, llm, reference):
    check_concurrent_streams(server, llm, reference)


def test_numprocs_tokenizers_both_work(server):
    text = get(server.url + "/metrics")[1]
    handled = [metric(text, "ferry_tokenizer_requests_handled", f'tokenizer="{i}"') for i in (0, 1)]
    assert all(h and h > 0 for h in handled), handled
