"""Reading tool calls back out of generated text (issue 15), in the OpenAI shapes.

Parsers: "hermes" (<tool_call>{"name": ..., "arguments": {...}}</tool_call>, as Qwen2.5/Qwen3, Hermes and ferry's
own tool prompt write them) and "llama3_json" (Llama 3.1's JSON calls, {"name": ..., "parameters": {...}}, after an
optional <|python_tag|>, several joined by ";"). `--tool-call-parser auto` picks one from the chat template
(resolve_parser). A forced choice (required / named) was generated under a grammar: its JSON is read directly.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

PARSERS = ("hermes", "llama3_json")
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_HERMES_START = "<tool_call>"
_PYTHON_TAG = "<|python_tag|>"


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: str  # a JSON string, as OpenAI sends it
    id: str = ""

    def __post_init__(self):
        self.id = self.id or "call_" + uuid.uuid4().hex[:24]

    def message(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def resolve_parser(setting: str, chat_template: str | None) -> str:
    """The parser to use: the setting, or for "auto" the one the chat template writes. A template that renders no
    tools gets ferry's Hermes-style tool prompt, so "hermes" reads it back."""
    if setting != "auto":
        if setting not in PARSERS:
            raise ValueError(f"--tool-call-parser must be auto or one of {', '.join(PARSERS)}, got {setting!r}")
        return setting
    template = chat_template or ""
    if "<|python_tag|>" in template or "ipython" in template:
        return "llama3_json"
    return "hermes"


def _call(obj) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def parse_hermes(text: str) -> tuple[str, list[ToolCall]]:
    start = text.find(_HERMES_START)
    if start < 0:
        return text, []
    calls = []
    for body in _HERMES.findall(text[start:]):
        try:
            call = _call(json.loads(body))
        except ValueError:
            call = None
        if call is None:
            return text, []  # not a well-formed call: the text stays content
        calls.append(call)
    return text[:start].strip(), calls


def parse_llama3_json(text: str) -> tuple[str, list[ToolCall]]:
    body = text.strip()
    if body.startswith(_PYTHON_TAG):
        body = body[len(_PYTHON_TAG):].strip()
    if not body.startswith("{"):
        return text, []
    calls = []
    decoder = json.JSONDecoder()
    pos = 0
    while pos < len(body):
        try:
            obj, end = decoder.raw_decode(body, pos)
        except ValueError:
            return text, []
        call = _call(obj)
        if call is None:
            return text, []
        calls.append(call)
        pos = end
        while pos < len(body) and body[pos] in " \n\t;":
            pos += 1
    return "", calls


def parse_free(text: str, parser: str) -> tuple[str, list[ToolCall]]:
    return parse_llama3_json(text) if parser == "llama3_json" else parse_hermes(text)


def parse_forced(text: str, choice: str, name: str) -> list[ToolCall]:
    """The output of a grammar-forced choice: an arguments object (named) or an array of calls (required). Text
    cut short (max_tokens) gives no calls."""
    try:
        obj = json.loads(text)
    except ValueError:
        return []
    if choice == "named":
        return [ToolCall(name, json.dumps(obj, ensure_ascii=False))] if isinstance(obj, dict) else []
    return [c for c in map(_call, obj if isinstance(obj, list) else []) if c is not None]


def may_start_call(text: str, parser: str) -> int:
    """Where a tool call may begin in streamed text (len(text) when it cannot yet): content before it streams."""
    if parser == "llama3_json":
        stripped = text.lstrip()
        if not stripped:
            return 0  # leading whitespace may come before a call: held until the first real character
        if stripped[0] == "{" or _PYTHON_TAG.startswith(stripped[:len(_PYTHON_TAG)]):
            return 0
        return len(text)
    at = text.find(_HERMES_START)
    if at >= 0:
        return at
    for k in range(min(len(_HERMES_START) - 1, len(text)), 0, -1):  # a tag cut at the end: hold it back
        if _HERMES_START.startswith(text[-k:]):
            return len(text) - k
    return len(text)
