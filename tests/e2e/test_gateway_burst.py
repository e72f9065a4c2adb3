"""A burst of streams through the real pipeline (`ferry serve --load-format dummy` of a tiny Llama on the CPU): every
request of two rounds of a few hundred streaming completions, all at once, finishes with all its tokens, and the
gateway's /health stays 200 throughout, also while it is behind on its reply socket (the production failure: a
gateway starved by its own reply backlog answered 503 "no word from the scheduler"). A short peer timeout makes
a starved stats reader show within the test's time."""
from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from _pipeline import Server, ferry_command, free_port

TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 1,
              "eos_token_id": 2, "tie_word_embeddings": False}
STREAMS, TOKENS, ROUNDS = 250, 16, 2
PEER_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("burst")
    config = tmp / "config.json"
    config.write_text(json.dumps(TINY_LLAMA))
    port = free_port()
    s = Server(ferry_command() + ["serve", "--load-format", "dummy", "--hf-config", str(config), "--device", "cpu",
                                  "--port", str(port), "--run-dir", str(tmp / "run"), "--max-num-seqs", "512",
                                  "--peer-timeout", str(PEER_TIMEOUT)], port, str(tmp / "ferry.log"))
    try:
        s.wait_ready(timeout=90)
        yield s
    finally:
        s.stop()


async def _stream(client: openai.AsyncOpenAI, i: int) -> tuple[str, int]:
    prompt = [3 + (i * 7 + k) % 500 for k in range(8)]  # the same prompts each round: the prefix cache hits
    stream = await client.completions.create(model="SmolLM2-135M-Instruct", prompt=prompt, max_tokens=TOKENS,
                                             stream=True, stream_options={"include_usage": True},
                                             extra_body={"ignore_eos": True}, temperature=0.0)
    finish, tokens = "", 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return finish, tokens


async def _burst(url: str) -> tuple[list, list[int]]:
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=STREAMS + 10), timeout=120)
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", http_client=http, max_retries=0, timeout=120)
    health: list[int] = []
    done = asyncio.Event()

    async def watch():  # what a load balancer does, every 100 ms while the burst runs
        async with httpx.AsyncClient(timeout=30) as probe:
            while not done.is_set():
                health.append((await probe.get(url + "/health")).status_code)
                await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch())
    try:
        results = []
        for _ in range(ROUNDS):
            results += await asyncio.wait_for(
                asyncio.gather(*(_stream(client, i) for i in range(STREAMS)), return_exceptions=True), 150)
    finally:
        done.set()
        await watcher
        await http.aclose()
    return results, health


def test_every_stream_of_a_burst_finishes_and_health_stays_ready(server):
    results, health = asyncio.run(_burst(server.url))
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, f"{len(failed)} of {len(results)} failed, the first: {failed[0]!r}\n{server.logs()[-3000:]}"
    assert results == [("length", TOKENS)] * (STREAMS * ROUNDS)
    assert health and set(health) == {200}, health
    assert "no word from the scheduler" not in server.logs()
