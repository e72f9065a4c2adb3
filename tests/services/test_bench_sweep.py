"""ferry bench's vLLM-bench features: a ShareGPT file read as vLLM reads it, goodput under SLOs, a sweep's plan,
and --max-concurrency against a stand-in OpenAI server (aiohttp, in this process) that counts open streams."""
import asyncio
import json
import math
import random

import pytest
from aiohttp import web

from engine.tokenizer import DummyTokenizer
from services.bench.__main__ import make_requests, parse_args, sweep
from services.bench.client import run_load
from services.bench.sharegpt import is_valid_pair, sharegpt_requests
from services.bench.stats import RequestRecord, format_summary, goodput, meets_slo, summarize
from services.bench.workload import BenchRequest, sharegpt_synth

TOK = DummyTokenizer(512, bos_token_id=1, eos_token_ids=[2])


def words(n: int) -> str:
    return " ".join(f"t{10 + i}" for i in range(n))


def conv(prompt_words: int, reply_words: int, **extra) -> dict:
    return {"conversations": [{"from": "human", "value": words(prompt_words)},
                              {"from": "gpt", "value": words(reply_words)}], **extra}


def write(tmp_path, entries) -> str:
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(entries))
    return str(path)


def test_sharegpt_filters_as_vllm(tmp_path):
    # the dummy tokenizer adds BOS: n words are n + 1 prompt tokens, and the reply is counted the same way
    entries = [conv(5, 9, id="ok"), conv(2, 9, id="prompt 3 tokens"), conv(5, 2, id="reply 3 tokens"),
               conv(1100, 9, id="prompt over 1024"), conv(1000, 1100, id="sum over 2048"),
               {"conversations": [{"from": "human", "value": words(9)}], "id": "one turn"}, {"id": "none"},
               conv(3, 3, id="ok too: 4 and 4")]
    reqs = sharegpt_requests(write(tmp_path, entries), 10, TOK, oversample=False)
    assert sorted((len(r.prompt), r.output_len) for r in reqs) == [(4, 4), (6, 10)]
    assert all(r.prompt[0] == 1 and r.prompt[1:] == list(range(10, 10 + len(r.prompt) - 1)) for r in reqs)
    assert is_valid_pair(4, 1, output_len_given=True) and not is_valid_pair(4, 3)


def test_sharegpt_order_is_vllms_shuffle_and_oversampling(tmp_path):
    entries = [conv(4 + i, 4 + i) for i in range(20)]
    path = write(tmp_path, entries)
    expect = list(entries)
    random.seed(7)
    random.shuffle(expect)  # what vLLM's ShareGPTDataset does with --seed 7
    reqs = sharegpt_requests(path, 5, TOK, seed=7)
    assert [len(r.prompt) - 1 for r in reqs] == [len(e["conversations"][0]["value"].split()) for e in expect[:5]]
    filled = sharegpt_requests(path, 50, TOK, seed=7)
    assert len(filled) == 50 and {tuple(r.prompt) for r in filled[20:]} <= {tuple(r.prompt) for r in filled[:20]}
    assert all(r.output_len == 30 for r in sharegpt_requests(path, 5, TOK, output_len=30))
    with pytest.raises(ValueError):
        sharegpt_requests(write(tmp_path, [conv(1, 1)]), 5, TOK)


def test_cli_dataset_and_sweep(tmp_path):
    path = write(tmp_path, [conv(6, 6, id=i) for i in range(30)])
    args = parse_args(["--dataset", "sharegpt", path, "--num-requests", "4", "--request-rate", "4,inf",
                       "--max-concurrency", "0,2", "--hf-config", "llama-3.1-8b"])
    assert sweep(args) == [(4.0, 0), (math.inf, 0), (4.0, 2), (math.inf, 2)]
    assert len(make_requests(args, 0, TOK)) == 4
    with pytest.raises(SystemExit):
        parse_args(["--dataset", "sonnet", path])
    with pytest.raises(SystemExit):
        parse_args(["--max-concurrency", "two"])


def test_sweep_runs_draw_their_own_prompts():
    args = parse_args(["--num-requests", "5", "--vocab-size", "512"])
    first, second = make_requests(args, 0), make_requests(args, 1)
    assert [r.prompt for r in first] == [r.prompt for r in sharegpt_synth(5, 512)]  # run 0: the workload's own
    assert [len(r.prompt) for r in first] == [len(r.prompt) for r in second]
    assert [r.output_len for r in first] == [r.output_len for r in second]
    assert all(a.prompt != b.prompt for a, b in zip(first, second))


def test_goodput():
    fast = RequestRecord(5, 4, ttft=0.05, latency=0.05 + 3 * 0.01, output_tokens=4)  # TPOT 10 ms
    slow_first = RequestRecord(5, 4, ttft=0.5, latency=0.53, output_tokens=4)
    slow_tokens = RequestRecord(5, 4, ttft=0.05, latency=0.05 + 3 * 0.05, output_tokens=4)  # TPOT 50 ms
    one = RequestRecord(5, 1, ttft=0.05, latency=0.05, output_tokens=1)
    failed = RequestRecord(5, 4, error="HTTP 503")
    recs = [fast, slow_first, slow_tokens, one, failed]
    assert [meets_slo(r, 100, 20) for r in recs] == [True, False, False, True, False]
    assert [meets_slo(r, 0, 20) for r in recs] == [True, True, False, True, False]
    g = goodput(recs, 2.0, 100, 20)
    assert g["good_requests"] == 2 and g["requests_per_s"] == 1.0 and g["fraction"] == 0.4
    s = summarize(recs, 2.0, slo_ttft_ms=100, slo_tpot_ms=20)
    assert s["goodput"] == g and "goodput 1.00 req/s (2 of 5" in format_summary("x", s)
    assert "goodput" not in summarize(recs, 2.0)


class FakeOpenAI:
    """Streams `tokens` SSE chunks per completion, `gap` s apart; remembers the most streams open at once."""

    def __init__(self, gap=0.01):
        self.gap, self.open, self.peak, self.served = gap, 0, 0, 0

    async def models(self, _):
        return web.json_response({"data": [{"id": "fake"}]})

    async def completions(self, request):
        body = await request.json()
        self.open += 1
        self.peak = max(self.peak, self.open)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(body["max_tokens"]):
            await asyncio.sleep(self.gap)
            await resp.write(b"data: " + json.dumps({"choices": [{"text": f" t{i}"}]}).encode() + b"\n\n")
        usage = {"choices": [], "usage": {"completion_tokens": body["max_tokens"]}}
        await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
        self.open -= 1
        self.served += 1
        return resp


async def _load(fake, requests, times, max_concurrency):
    app = web.Application()
    app.router.add_get("/v1/models", fake.models)
    app.router.add_post("/v1/completions", fake.completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        return await asyncio.wait_for(run_load(f"http://127.0.0.1:{port}", requests, times,
                                               max_concurrency=max_concurrency), 30)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("bound", [2, 0])
def test_max_concurrency_is_closed_loop(bound):
    fake = FakeOpenAI(gap=0.05)
    requests = [BenchRequest([5, 6, 7], 3) for _ in range(8)]
    records, duration, model = asyncio.run(_load(fake, requests, [0.0] * 8, bound))
    assert model == "fake" and fake.served == 8 and all(r.ok and r.output_tokens == 3 for r in records)
    assert fake.peak == (bound or 8)
    s = summarize(records, duration)
    assert s["max_concurrency"] == (bound or 8)
    if bound:  # a request that waited for a slot is sent late (3 rounds of >= 0.15 s before the last), and
        last = max(records, key=lambda r: r.start)  # its TTFT counts from its sending, not from time 0
        assert last.start >= 0.3 and last.ttft < last.start
