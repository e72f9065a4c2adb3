"""--trace-first-token against a live ferry (default model): every process logs its hops of each request's first
token, and benchmarks/first_token_hops.py joins them into one path per request, in the order the token travels."""
from __future__ import annotations

import pytest
from _pipeline import MODEL, serving
from openai import OpenAI

from benchmarks.first_token_hops import breakdown, main, read_hops

PATH = ["gw_http_in", "gw_in", "tok_in", "tok_out", "sched_in", "sched_admitted", "sched_plan_out", "run_plan_in",
        "run_step_start", "run_submitted", "run_result_out", "sched_result_in", "sched_tokens_out", "detok_in",
        "detok_out", "gw_reply_in", "gw_headers_out"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("trace"), "--trace-first-token") as s:
        yield s


def test_each_requests_first_token_is_timed_at_every_hop(server, capsys):
    client = OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=120, max_retries=0)
    ids = []
    for i in range(3):
        stream = client.completions.create(model=MODEL, prompt=f"Count to {i + 3}:", max_tokens=3, temperature=0.0,
                                           stream=True, extra_body={"ignore_eos": True})
        chunks = list(stream)
        assert "".join(c.choices[0].text for c in chunks if c.choices)
        ids.append(chunks[0].id)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    ids.append(chat.id)
    by_rid = read_hops(server.logs().splitlines())
    assert sorted(by_rid) == sorted(ids)
    for rid in ids:
        hops = by_rid[rid]
        assert set(PATH) <= set(hops), (rid, sorted(hops))
        # one host, one clock: the token passes the hops in path order ("out" hops are stamped before the send,
        # "in" hops after the receive); two hops may share a microsecond
        times = [hops[h] for h in PATH]
        assert all(a <= b for a, b in zip(times, times[1:])), (rid, dict(zip(PATH, times)))
    rows = {hop: (gap, since_first, n) for hop, gap, since_first, n in breakdown(by_rid)}
    assert rows["gw_http_in"][1] == 0 and rows["gw_headers_out"][2] == len(ids)
    log_path = server.log_path
    assert main([log_path]) == 0
    printed = capsys.readouterr().out
    assert f"{len(ids)} requests" in printed and "sched_plan_out" in printed
