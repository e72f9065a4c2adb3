"""Ollama's `format` ("json" or a JSON schema) through the official client (issue 19, must-hold 1's last item).

It becomes the OpenAI request's response_format, which structured outputs (issue 15) serve: until that is merged,
these requests get the "response_format is not supported" 400 (named `format`) and this module fails."""
from __future__ import annotations

import json

import ollama
import pytest
from _pipeline import MODEL, Server, ferry_command, free_port

QUESTION = [{"role": "user", "content": "Give the capital of France as JSON with the key city."}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.fixture(scope="module")
def oc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ollama-format")
    port = free_port()
    s = Server(ferry_command() + ["serve", "--port", str(port), "--run-dir", str(tmp / "run"), "--max-num-seqs", "4"],
               port, str(tmp / "ferry.log"))
    try:
        s.wait_ready()
        yield ollama.Client(host=s.url, timeout=120)
    finally:
        s.stop()


def test_format_json_gives_json(oc):
    r = oc.chat(MODEL, messages=QUESTION, format="json", options={"temperature": 0, "num_predict": 48})
    assert isinstance(json.loads(r.message.content), dict)
    g = oc.generate(MODEL, QUESTION[0]["content"], format="json", options={"temperature": 0, "num_predict": 48})
    assert isinstance(json.loads(g.response), dict)


def test_format_schema_gives_an_instance(oc):
    r = oc.chat(MODEL, messages=QUESTION, format=SCHEMA, options={"temperature": 0, "num_predict": 48})
    assert isinstance(json.loads(r.message.content)["city"], str)
