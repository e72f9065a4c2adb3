"""Issue 15 without sockets: tool-call parsing (hermes, llama3_json, forced), the streamed fragments, the protocol's
grammar for each tool_choice, and the tools in the prompt of a template that ignores them."""
import json

import pytest

from services.gateway.structured_protocol import parse_structured
from services.gateway.tool_calls import may_start_call, parse_forced, parse_hermes, parse_llama3_json, resolve_parser
from services.gateway.tool_protocol import forced_grammar, parse_tools
from services.gateway.tool_responses import ToolStream, apply_to_response
from services.tokenizer.tool_prompt import with_tools

FN = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
FN2 = {"type": "function", "function": {"name": "add"}}


def test_hermes_calls_and_content():
    text = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n' \
           '<tool_call>{"name": "add", "arguments": {}}</tool_call>'
    content, calls = parse_hermes(text)
    assert content == "Let me look."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}), ("add", {})]
    assert parse_hermes("no calls here") == ("no calls here", [])
    assert parse_hermes("<tool_call>{not json}</tool_call>")[1] == []  # malformed: stays content


def test_llama3_json_calls():
    content, calls = parse_llama3_json('<|python_tag|>{"name": "add", "parameters": {"a": 1}}; '
                                       '{"name": "get_weather", "parameters": {"city": "Rome"}}')
    assert content == "" and [c.name for c in calls] == ["add", "get_weather"]
    assert json.loads(calls[0].arguments) == {"a": 1}
    assert parse_llama3_json("Hello there")[1] == []


def test_forced_outputs():
    (call,) = parse_forced('{"city": "Oslo"}', "named", "get_weather")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Oslo"}
    calls = parse_forced('[{"name": "add", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "x"}}]',
                         "required", "")
    assert [c.name for c in calls] == ["add", "get_weather"]
    assert parse_forced('[{"name": "add", "argu', "required", "") == []  # cut by max_tokens


def test_parser_from_template():
    assert resolve_parser("auto", "{{ '<tool_call>' }}") == "hermes"
    assert resolve_parser("auto", "{% if message.role == 'ipython' %}<|python_tag|>{% endif %}") == "llama3_json"
    assert resolve_parser("auto", None) == "hermes"  # ferry's own tool prompt is Hermes style
    with pytest.raises(ValueError):
        resolve_parser("bogus", None)


def test_tool_choice_grammars():
    req = parse_tools({"tools": [FN, FN2], "tool_choice": "required", "parallel_tool_calls": False}, 65536)
    kind, spec = forced_grammar(req)
    schema = json.loads(spec)
    assert kind == "json_schema" and schema["type"] == "array" and schema["maxItems"] == 1
    assert [s["properties"]["name"]["const"] for s in schema["items"]["anyOf"]] == ["get_weather", "add"]
    named = parse_tools({"tools": [FN], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
                        65536)
    assert json.loads(forced_grammar(named)[1]) == FN["function"]["parameters"]
    assert forced_grammar(parse_tools({"tools": [FN]}, 65536)) is None  # auto: free text, parsed after
    assert not parse_tools({"tools": [FN], "tool_choice": "none"}, 65536).parses


def test_structured_fields_are_canonical():
    a = parse_structured({"guided_json": '{"type": "object",  "properties": {"b": {}, "a": {}}}'}, 65536)
    b = parse_structured({"structured_outputs": {"json": {"type": "object", "properties": {"b": {}, "a": {}}}}},
                         65536)
    assert a[:2] == b[:2] == ("json_schema", '{"type":"object","properties":{"b":{},"a":{}}}')  # key order kept
    assert parse_structured({"response_format": {"type": "text"}}, 65536) is None
    assert parse_structured({"guided_choice": ["a", "b"]}, 65536)[:2] == ("choice", '["a", "b"]')


def _stream(text_parts, tools, parser="hermes", finish="stop"):
    ts = ToolStream(tools, parser, 1)
    text, out = "", []
    for i, part in enumerate(text_parts):
        text += part
        out += ts.on_delta(0, text, finish if i == len(text_parts) - 1 else None)
    return out


def test_streamed_fragments_reassemble_to_the_calls():
    tools = parse_tools({"tools": [FN, FN2]}, 65536)
    parts = ["Sure", ". <tool", "_call>", '{"name": "get_weather", ', '"arguments": {"city": "Paris"}}', "</tool_call>"]
    chunks = _stream(parts, tools)
    content = "".join(c["delta"].get("content", "") for c in chunks)
    assert content == "Sure. "  # the tag and what follows never stream as content
    calls = {}
    for c in chunks:
        for tc in c["delta"].get("tool_calls", []):
            entry = calls.setdefault(tc["index"], {"name": "", "arguments": ""})
            entry["name"] += tc.get("function", {}).get("name", "")
            entry["arguments"] += tc["function"]["arguments"]
    assert calls == {0: {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    assert chunks[-1]["finish_reason"] == "tool_calls"
    plain = _stream(["Hello <b>", " world"], tools)  # no call: everything is content, finish as it was
    assert "".join(c["delta"].get("content", "") for c in plain) == "Hello <b> world"
    assert plain[-1]["finish_reason"] == "stop"


def test_non_streamed_body_gets_tool_calls():
    tools = parse_tools({"tools": [FN]}, 65536)
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content":
                                                 '<tool_call>{"name": "get_weather", "arguments": {"city": "x"}}'
                                                 '</tool_call>'}, "finish_reason": "stop"}]}
    choice = apply_to_response(body, tools, "hermes")["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "x"}'}


class _PlainTemplate:
    chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"


def test_tools_reach_a_template_that_ignores_them():
    tools = parse_tools({"tools": [FN]}, 65536).tools
    history = [{"role": "user", "content": "weather?"},
               {"role": "assistant", "content": "", "tool_calls": [
                   {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}]
    messages, kwargs = with_tools(history, tools, _PlainTemplate())
    assert kwargs == {}
    assert messages[0]["role"] == "system" and '"name": "get_weather"' in messages[0]["content"]
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in \
        messages[2]["content"]
    assert messages[3] == {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"}


def test_tools_go_to_a_template_that_renders_them():
    class ToolTemplate:
        chat_template = "{% if tools %}{{ tools | tojson }}{% endif %}"

    tools = parse_tools({"tools": [FN]}, 65536).tools
    history = [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "P"}'}}]}]
    messages, kwargs = with_tools(history, tools, ToolTemplate())
    assert kwargs == {"tools": tools}
    assert messages[0]["tool_calls"][0]["function"]["arguments"] == {"city": "P"}  # objects, as templates expect


def test_may_start_call_holds_back_partial_tags():
    assert may_start_call("Hi <tool_ca", "hermes") == 3
    assert may_start_call("Hi there", "hermes") == 8
    assert may_start_call('  {"name"', "llama3_json") == 0
