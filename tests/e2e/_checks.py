"""The OpenAI-client checks both launch modes must pass (greedy text equals the engine's)."""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import openai
from _pipeline import MODEL

QUESTIONS = ["What is the capital of France?", "Name three colors.", "What is 2 + 2?", "Say hello in Spanish.",
             "What do bees make?", "Which planet is the largest?", "Write a haiku about rain.",
             "What is water made of?"]


def client(server, **kw):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120, **kw)


def expected(llm, reference, messages, max_tokens):
    from services.tokenizer.prompts import normalize_messages  # text parts -> strings, as the server does

    prompt = llm.chat_prompt(normalize_messages(messages))
    out = reference(prompt, max_tokens)
    return prompt, out, llm.tokenizer.decode(out, skip_special_tokens=True)


def check_chat(server, llm, reference):
    messages = [{"role": "user", "content": QUESTIONS[0]}]
    prompt, out, text = expected(llm, reference, messages, 16)
    r = client(server).chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=16)
    assert r.choices[0].message.content == text
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == ("stop" if len(out) < 16 else "length")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(prompt), len(out))
    assert r.usage.total_tokens == len(prompt) + len(out)
    assert "Paris" in text


def check_stream(server, llm, reference):
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": [{"type": "text", "text": QUESTIONS[1]}]}]
    prompt, out, text = expected(llm, reference, messages, 16)
    chunks = list(client(server).chat.completions.create(model=MODEL, messages=messages, temperature=0,
                                                         max_tokens=16, stream=True,
                                                         stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in content) == text
    assert content[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in content[:-1])
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.prompt_tokens == len(prompt)
    assert usage.usage.completion_tokens == len(out)


def check_completion(server, llm, reference):
    c = client(server)
    prompt_text = "The capital of France is"
    ids = llm.tokenizer.encode(prompt_text)
    out = reference(ids, 8)
    text = llm.tokenizer.decode(out, skip_special_tokens=True)
    r = c.completions.create(model=MODEL, prompt=prompt_text, temperature=0, max_tokens=8)
    assert r.choices[0].text == text
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), len(out))
    r = c.completions.create(model=MODEL, prompt=ids, temperature=0, max_tokens=8)  # token-id prompt
    assert r.choices[0].text == text


def check_concurrent_streams(server, llm, reference, count: int = 8):
    # The reference runs all prompts as one batch too (one call: the CPU engine is slow).
    prompts = [llm.chat_prompt([{"role": "user", "content": q}]) for q in QUESTIONS[:count]]
    outs = reference.batch(prompts, 12)
    want = [(llm.tokenizer.decode(o, skip_special_tokens=True), len(o)) for o in outs]

    async def one(c, q):
        stream = await c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}],
                                                 temperature=0, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True})
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
        return text, usage.completion_tokens

    async def all_of_them():
        c = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=180)
        try:
            return await asyncio.gather(*(one(c, q) for q in QUESTIONS[:count]))
        finally:
            await c.close()

    got = asyncio.run(all_of_them())
    assert got == want


class OpenAIClientChecks:
    """The four client checks as tests; a launch mode's module subclasses this beside its `server` fixture."""

    def test_chat(self, server, llm, reference):
        check_chat(server, llm, reference)

    def test_stream_with_usage(self, server, llm, reference):
        check_stream(server, llm, reference)

    def test_completion(self, server, llm, reference):
        check_completion(server, llm, reference)

    def test_eight_concurrent_streams(self, server, llm, reference):
        check_concurrent_streams(server, llm, reference)


def kill_mid_stream(server, pid: int, limit: float = 10.0) -> float:
    """Open a long stream, SIGKILL `pid` half a second into it, and check that the stream ends with an error
    within `limit` seconds instead of hanging. Returns when the kill happened (time.monotonic())."""
    stream = client(server).completions.create(model=MODEL, prompt="Tell me a long story", max_tokens=2000,
                                               stream=True, extra_body={"ignore_eos": True})
    assert next(iter(stream)).choices
    killed = {}

    def kill():
        time.sleep(0.5)  # mid-stream
        os.kill(pid, signal.SIGKILL)
        killed["at"] = time.monotonic()

    threading.Thread(target=kill).start()
    try:
        for _ in stream:
            pass
    except openai.APIError:
        pass
    else:
        raise AssertionError("the stream ended without an error after its server lost a process")
    assert time.monotonic() - killed["at"] < limit, f"the stream outlived the kill by {limit}s"
    return killed["at"]
