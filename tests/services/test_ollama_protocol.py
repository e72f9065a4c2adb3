"""Ollama bodies -> the OpenAI request the gateway parses (services/gateway/ollama_protocol.py), no sockets."""
from __future__ import annotations

import json

import pytest

from services.gateway.ollama_protocol import _format, _messages, parse_ollama
from shared.errors import InvalidParameter, ModelNotFound

SERVED = ["m"]


def chat(**body):
    return parse_ollama({"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}, True, SERVED)


def test_chat_defaults_are_ollamas_and_it_streams():
    req = chat()
    p = req.parsed
    assert p.chat and p.stream and p.messages == [{"role": "user", "content": "hi"}]
    assert (p.params.temperature, p.params.top_k, p.params.top_p, p.params.max_tokens) == (0.8, 40, 0.9, None)
    assert p.params.n == 1 and req.model == "m"


def test_options_map_to_sampling_params():
    p = chat(stream=False, options={"temperature": 0, "top_p": 0.5, "top_k": 0, "num_predict": 7, "stop": ["x"],
                                    "seed": 3, "repeat_penalty": 1.2, "min_p": 0.1, "presence_penalty": 0.5,
                                    "frequency_penalty": 0.25, "num_ctx": 512, "mirostat": 0}).parsed
    sp = p.params
    assert not p.stream
    assert (sp.temperature, sp.top_p, sp.top_k, sp.max_tokens, sp.stop, sp.seed) == (0.0, 0.5, -1, 7, ["x"], 3)
    assert (sp.repetition_penalty, sp.min_p, sp.presence_penalty, sp.frequency_penalty) == (1.2, 0.1, 0.5, 0.25)
    assert chat(options={"num_ctx": 512}).num_ctx == 512
    assert chat(options={"num_predict": -1, "seed": -1}).parsed.params.max_tokens is None
    assert chat(options={"seed": -1}).parsed.params.seed is None


def test_generate_applies_the_template_unless_raw():
    p = parse_ollama({"model": "m", "prompt": "hi", "system": "be brief"}, False, SERVED).parsed
    assert p.chat and p.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    raw = parse_ollama({"model": "m:latest", "prompt": "hi", "raw": True}, False, SERVED).parsed
    assert not raw.chat and raw.prompts == ["hi"]
    assert parse_ollama({"model": "m"}, False, SERVED).parsed is None  # Ollama's "load the model"
    assert parse_ollama({"model": "m", "messages": []}, True, SERVED).parsed is None


@pytest.mark.parametrize("body,param", [
    ({"options": {"foo": 1}}, "options.foo"),
    ({"options": {"typical_p": 0.5}}, "options.typical_p"),
    ({"options": {"num_predict": 0}}, "options.num_predict"),
    ({"options": {"temperature": "hot"}}, "options.temperature"),
    ({"options": {"repeat_penalty": 0}}, "options.repeat_penalty"),
    ({"options": {"stop": [""]}}, "options.stop"),
    ({"options": {"num_ctx": 0}}, "options.num_ctx"),
    ({"options": []}, "options"),
    ({"keep_alive": "soon"}, "keep_alive"),
    ({"think": True}, "think"),
    ({"stream": 1}, "stream"),
    ({"suffix": "x"}, "suffix"),
    ({"model": ""}, "model"),
    ({"format": "yaml"}, "format"),
    ({"messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]}, "messages[0].images"),
    ({"messages": [{"role": "user", "content": "hi", "colour": "red"}]}, "messages[0].colour"),
])
def test_errors_name_the_ollama_field(body, param):
    with pytest.raises(InvalidParameter) as e:
        chat(**body)
    assert e.value.param == param and e.value.message.startswith(param.split("[")[0]), e.value.message


def test_unknown_model_is_not_found_and_keep_alive_is_accepted():
    with pytest.raises(ModelNotFound):
        chat(model="other")
    for keep_alive in (0, -1, 300, "5m", "1h30m", "-1"):
        assert chat(keep_alive=keep_alive).parsed is not None


def test_format_and_tool_calls_translate_to_openai():
    assert _format("json") == {"type": "json_object"}
    schema = {"type": "object"}
    assert _format(schema) == {"type": "json_schema", "json_schema": {"name": "format", "schema": schema}}
    assert _format("") is None and _format(None) is None
    [msg] = _messages([{"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "f", "arguments": {"x": 1}}}]}])
    assert msg["tool_calls"][0]["function"] == {"name": "f", "arguments": json.dumps({"x": 1})}
