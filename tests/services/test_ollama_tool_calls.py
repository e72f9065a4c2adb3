"""Ollama /api/chat with tools: the model's calls come back as message.tool_calls with arguments as objects
(Ollama's shape, where OpenAI's carry a JSON string), and the rest of the text as content."""
from types import SimpleNamespace

from services.gateway.ollama import OllamaCall
from services.gateway.tool_protocol import parse_tools

FN = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def call_for(body: dict) -> tuple[OllamaCall, SimpleNamespace]:
    call = OllamaCall(SimpleNamespace(), chat=True)
    call.served = SimpleNamespace(tool_parser="hermes")  # what the model router resolved
    run = SimpleNamespace(p=SimpleNamespace(tools=parse_tools(body, 65536)))
    return call, run


def test_a_hermes_call_becomes_an_ollama_tool_call():
    call, run = call_for({"tools": [FN]})
    text = 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    content, calls = call._tool_calls(run, text)
    assert calls == [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert content.strip() == "Checking."


def test_text_without_a_call_stays_content_and_no_tools_means_no_parsing():
    call, run = call_for({"tools": [FN]})
    assert call._tool_calls(run, "It is sunny.") == ("It is sunny.", [])
    call, run = call_for({"tools": [FN], "tool_choice": "none"})
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    assert call._tool_calls(run, text) == (text, [])
