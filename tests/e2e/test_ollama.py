"""Ollama's API on `ferry serve` (issue 19, must-hold 1): the official `ollama` client and LangChain's ChatOllama
against the default model, with answers equal to the OpenAI routes' for the same request."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import datetime

import ollama
import pytest
from _checks import client as openai_client
from _pipeline import MODEL, child_pids, get, post, serving

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 12}
SHORT = {"temperature": 0, "num_predict": 6}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("ollama"), "--peer-timeout", "3", "--max-num-seqs", "8") as s:
        yield s


@pytest.fixture(scope="module")
def oc(server):
    return ollama.Client(host=server.url, timeout=120)


@pytest.fixture(scope="module")
def openai(server):
    return openai_client(server)


@pytest.fixture(scope="module")
def reference(openai):
    """The OpenAI route's greedy answer to QUESTION: what the Ollama routes must say too."""
    return openai.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=12)


@pytest.fixture(scope="module")
def greedy(oc):
    return oc.chat(MODEL, messages=QUESTION, options=GREEDY)


def _check_final(r, prompt_tokens: int, completion_tokens: int):
    assert r.done is True and r.done_reason in ("stop", "length")
    assert r.prompt_eval_count == prompt_tokens and r.eval_count == completion_tokens
    for name in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(getattr(r, name), int) and getattr(r, name) >= 0, name
    assert r.total_duration >= r.prompt_eval_duration + r.eval_duration > 0
    assert datetime.fromisoformat(r.created_at.replace("Z", "+00:00")).year >= 2024


def test_list_show_ps_version(server, oc):
    [m] = oc.list().models
    assert m.model == MODEL and m.size > 0 and len(m.digest) == 64
    assert (m.details.family, m.details.format, m.details.quantization_level) == ("llama", "gguf", "Q4_1")
    assert m.details.parameter_size == "135M"
    shown = oc.show(MODEL + ":latest")  # Ollama's tag of the same model
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.block_count"] == 30 and shown.modelinfo["llama.context_length"] > 0
    assert "completion" in shown.capabilities
    [p] = oc.ps().models
    assert p.model == MODEL and p.context_length == shown.modelinfo["llama.context_length"]
    status, body = get(server.url + "/api/version")
    assert status == 200 and json.loads(body)["version"]


def test_chat_equals_the_openai_route(greedy, reference):
    r, ref = greedy, reference
    assert r.message.role == "assistant"
    assert r.message.content == ref.choices[0].message.content and "Paris" in r.message.content
    assert r.done_reason == ref.choices[0].finish_reason
    _check_final(r, ref.usage.prompt_tokens, ref.usage.completion_tokens)


def test_chat_streams_ndjson(oc, greedy):
    parts = list(oc.chat(MODEL, messages=QUESTION, options=GREEDY, stream=True))
    assert len(parts) > 2 and all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content for p in parts) == greedy.message.content
    assert parts[-1].message.content == "" and parts[-1].eval_count > 0


def test_generate_templated_raw_and_streaming(oc, openai, greedy, reference):
    prompt = QUESTION[0]["content"]
    r = oc.generate(MODEL, prompt, options=GREEDY)  # the chat template applied, as Ollama does
    assert r.response == greedy.message.content
    _check_final(r, reference.usage.prompt_tokens, reference.usage.completion_tokens)
    raw = oc.generate(MODEL, "The capital of France is", raw=True, options=SHORT)
    ref = openai.completions.create(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=6)
    assert raw.response == ref.choices[0].text
    _check_final(raw, ref.usage.prompt_tokens, ref.usage.completion_tokens)
    parts = list(oc.generate(MODEL, "The capital of France is", raw=True, options=SHORT, stream=True))
    assert "".join(p.response for p in parts) == raw.response and parts[-1].done
    with_system = oc.generate(MODEL, prompt, system="Answer in one word.", options=SHORT)
    ref = openai.chat.completions.create(model=MODEL, temperature=0, max_tokens=6,
                                         messages=[{"role": "system", "content": "Answer in one word."}, *QUESTION])
    assert with_system.response == ref.choices[0].message.content
    loaded = oc.generate(MODEL)  # no prompt: Ollama's "load the model"
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""


def test_options_mean_what_they_mean_in_ollama(oc, openai, greedy):
    short = oc.chat(MODEL, messages=QUESTION, options={"temperature": 0, "num_predict": 3})
    assert short.eval_count == 3 and short.done_reason == "length"
    full = greedy.message.content
    stop = full.split()[2]
    stopped = oc.chat(MODEL, messages=QUESTION, options={**GREEDY, "stop": [stop]}).message.content
    assert stopped == full[:full.index(stop)] and stopped != full
    # Ollama's defaults (temperature 0.8, top_k 40, top_p 0.9) with a seed: the OpenAI route with the same values
    seeded = oc.chat(MODEL, messages=QUESTION, options={"seed": 7, "num_predict": 10}).message.content
    ref = openai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=10, seed=7, temperature=0.8,
                                         top_p=0.9, extra_body={"top_k": 40})
    assert seeded == ref.choices[0].message.content
    penalized = oc.chat(MODEL, messages=QUESTION, options={**SHORT, "repeat_penalty": 1.5, "top_k": 0,
                                                           "top_p": 1.0, "num_ctx": 2048}, keep_alive="5m")
    ref = openai.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=6,
                                         extra_body={"repetition_penalty": 1.5})
    assert penalized.message.content == ref.choices[0].message.content


@pytest.mark.parametrize("call,status,needle", [
    (dict(options={"foo": 1}), 400, "options.foo"),
    (dict(options={"mirostat": 2}), 400, "options.mirostat"),
    (dict(options={"num_predict": 0}), 400, "options.num_predict"),
    (dict(options={"temperature": -1}), 400, "options.temperature"),
    (dict(options={"num_ctx": 10**6}), 400, "options.num_ctx"),
    (dict(model="no-such-model"), 404, "no-such-model"),
    (dict(think=True), 400, "think"),
])
def test_bad_chat_requests_get_ollama_errors(oc, call, status, needle):
    kwargs = {"model": MODEL, "messages": QUESTION, **call}
    with pytest.raises(ollama.ResponseError) as e:
        oc.chat(**kwargs)
    assert e.value.status_code == status and needle in e.value.error, e.value.error


def test_bad_generate_requests_and_the_error_shape(server):
    for body, needle in (({"prompt": "hi", "template": "{{ .Prompt }}"}, "template"),
                         ({"prompt": "hi", "raw": True, "system": "x"}, "system"),
                         ({"prompt": "hi", "context": [1, 2]}, "context"),
                         ({"prompt": "hi", "images": ["aGk="]}, "images"),
                         ({"prompt": "hi", "tools": []}, "tools"),
                         ({"prompt": "hi", "stream": "yes"}, "stream")):
        status, err = post(server.url + "/api/generate", {"model": MODEL, **body})
        assert status == 400 and list(err) == ["error"] and needle in err["error"], (body, err)
    status, err = post(server.url + "/api/generate", b"{not json")
    assert status == 400 and isinstance(err["error"], str)
    status, err = post(server.url + "/api/show", {"model": "nope"})
    assert status == 404 and isinstance(err["error"], str)
    assert get(server.url + "/health")[0] == 200


def test_langchain_chat_ollama(server, reference):
    from langchain_ollama import ChatOllama

    llm = ChatOllama(model=MODEL, base_url=server.url, temperature=0, num_predict=12, client_kwargs={"timeout": 120})
    ref = reference
    answer = llm.invoke(QUESTION[0]["content"])
    assert answer.content == ref.choices[0].message.content
    assert answer.usage_metadata["output_tokens"] == ref.usage.completion_tokens
    assert "".join(chunk.content for chunk in llm.stream(QUESTION[0]["content"])) == answer.content


FORMAT_QUESTION = [{"role": "user", "content": "Give the capital of France as JSON with the key city."}]
CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_format_json_gives_json(oc):
    """format "json" becomes response_format json_object (structured outputs, issue 15)."""
    r = oc.chat(MODEL, messages=FORMAT_QUESTION, format="json", options={"temperature": 0, "num_predict": 48})
    assert isinstance(json.loads(r.message.content), dict)
    g = oc.generate(MODEL, FORMAT_QUESTION[0]["content"], format="json", options={"temperature": 0,
                                                                                  "num_predict": 48})
    assert isinstance(json.loads(g.response), dict)


def test_format_schema_gives_an_instance(oc):
    r = oc.chat(MODEL, messages=FORMAT_QUESTION, format=CITY_SCHEMA, options={"temperature": 0, "num_predict": 48})
    assert isinstance(json.loads(r.message.content)["city"], str)


def test_an_error_mid_stream_is_one_error_line(server, oc):
    """Last in this module: it kills the runner."""
    stream = oc.generate(MODEL, "1, 2, 3, 4, 5, 6, 7, 8,", raw=True, stream=True,
                         options={"temperature": 0, "num_predict": 1500})
    assert not next(stream).done
    pid = child_pids(server.logs())["runner.0"]
    threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
    started = time.monotonic()
    with pytest.raises(ollama.ResponseError) as e:
        for _ in stream:
            assert time.monotonic() - started < 15
    assert e.value.error and time.monotonic() - started < 15
