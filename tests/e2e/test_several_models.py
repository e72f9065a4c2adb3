"""Several models in one server, one given by hub name (issue 19, must-holds 2 and 3): `ferry serve --model
SmolLM2-135M-Instruct --model ferry-test/tiny-llama`, the second a tiny random Llama (safetensors, with a
tokenizer of its own) found in a Hugging Face cache of the real layout with HF_HUB_OFFLINE=1. Both answer
through the openai client, /v1/models lists both, /api/pull fails clearly offline, and killing one model's
runner leaves the other answering while /health says which is down."""
from __future__ import annotations

import json
import os
import signal
import time

import openai
import pytest
import torch
from _checks import check_chat, client
from _pipeline import MODEL, Server, base_env, child_pids, ferry_command, free_port, get, post

TINY = "ferry-test/tiny-llama"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model in transformers (the reference) and its tokenizer; its files in a Hugging Face cache."""
    from fixtures.hub_cache import make_hf_cache
    from fixtures.models import make_hf_model
    from fixtures.tokenizers import make_char_tokenizer

    tmp = tmp_path_factory.mktemp("tiny")
    model = make_hf_model("llama", tmp / "src")
    tokenizer = make_char_tokenizer(tmp / "src")
    make_hf_cache(str(tmp / "hf"), TINY, str(tmp / "src"))
    return model, tokenizer, str(tmp / "hf")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny):
    tmp = tmp_path_factory.mktemp("several")
    port = free_port()
    argv = ferry_command() + ["serve", "--model", MODEL, "--model", TINY, "--port", str(port), "--run-dir",
                              str(tmp / "run"), "--peer-timeout", "3", "--max-num-seqs", "8",
                              "--kv-cache-bytes", str(64 * 1024 * 1024), "--allow-pull"]
    env = base_env(HF_HUB_OFFLINE=1, HF_HUB_CACHE=tiny[2], MODELSCOPE_CACHE=tmp / "modelscope")
    s = Server(argv, port, str(tmp / "ferry.log"), env)
    try:
        s.wait_ready()  # one model up: 200; wait for both
        deadline = time.monotonic() + 120
        while json.loads(get(s.url + "/health")[1] or "{}").get("status") != "ok":
            assert time.monotonic() < deadline, get(s.url + "/health")
            time.sleep(0.5)
        yield s
    finally:
        s.stop()


def greedy(model, ids: list[int], n: int) -> list[int]:
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids):]


def test_v1_models_lists_both(server):
    r = client(server).models.list()
    assert [m.id for m in r.data] == [MODEL, TINY]
    assert r.data[1].model_extra["root"] == TINY


def test_default_model_answers(server, llm, reference):
    check_chat(server, llm, reference)  # greedy text equals the in-process engine's


def test_tiny_model_answers_with_its_own_weights_and_tokenizer(server, tiny):
    model, tokenizer, _ = tiny
    prompt = tokenizer.encode("Hello tiny", add_special_tokens=False)
    r = client(server).completions.create(model=TINY, prompt=prompt, max_tokens=8, temperature=0,
                                          extra_body={"ignore_eos": True})
    assert r.model == TINY and r.usage.completion_tokens == 8
    assert r.choices[0].text == tokenizer.decode(greedy(model, prompt, 8), skip_special_tokens=True)
    messages = [{"role": "user", "content": "Hi"}]
    chat = client(server).chat.completions.create(model=TINY, messages=messages, max_tokens=4, temperature=0)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat.usage.prompt_tokens == len(tokenizer.encode(rendered, add_special_tokens=False))  # its template


def test_unknown_model_is_a_404(server):
    with pytest.raises(openai.NotFoundError) as e:
        client(server).chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=2)
    assert e.value.body["code"] == "model_not_found"


def test_pull_offline_says_so(server):
    status, body = post(server.url + "/api/pull", {"model": "ferry-test/not-here", "stream": False}, timeout=10)
    assert status == 503 and "offline" in body["error"] and "HF_HUB_OFFLINE" in body["error"], (status, body)
    status, body = post(server.url + "/api/pull", {"model": TINY, "stream": False}, timeout=10)
    assert (status, body) == (200, {"status": "success"})  # in the cache already: no network needed


def test_metrics_carry_both_models_engine_series(server):
    """One exposition, each family once, with each model's series under its model_name."""
    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + 10
    while True:
        status, text = get(server.url + "/metrics")
        families = list(text_string_to_metric_families(text))
        running = next((f for f in families if f.name == "ferry_num_requests_running"), None)
        models = {s.labels["model_name"] for s in running.samples} if running else set()
        if models == {MODEL, TINY} or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # each group's scheduler publishes its stats once a second
    assert status == 200 and models == {MODEL, TINY}
    names = [f.name for f in families]
    assert len(names) == len(set(names))


def test_one_model_down_leaves_the_other_serving(server, llm, reference):
    """Last: it takes the tiny model's group down for good (ferry serve reports a dead child, never restarts)."""
    pid = child_pids(server.logs())[f"{TINY}/runner.0"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        status, text = get(server.url + "/health")
        health = json.loads(text or "{}")
        if health.get("status") == "degraded":
            break
        assert time.monotonic() < deadline, (status, text)
        time.sleep(0.3)
    assert status == 200 and health["models"][MODEL] == "ok" and health["models"][TINY] != "ok", health
    assert get(server.url + f"/health?model={TINY}")[0] == 503
    assert get(server.url + f"/health?model={MODEL}")[0] == 200
    check_chat(server, llm, reference)
    with pytest.raises(openai.InternalServerError) as e:  # 503: that model is not ready
        client(server).completions.create(model=TINY, prompt="hi", max_tokens=2, timeout=30)
    assert e.value.status_code == 503
