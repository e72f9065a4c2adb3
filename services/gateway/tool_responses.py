"""Tool calls into OpenAI chat responses (issue 15): message.tool_calls, and in streaming the delta.tool_calls
fragments the SDKs reassemble (the id, type and name first, then the arguments), finish_reason "tool_calls".

A forced choice (required / named) streams no content: its JSON is read once the choice ends. With "auto", content
streams until a tool call may begin (services.gateway.tool_calls.may_start_call); from there text is held, and at the
end it becomes tool calls, or content after all when it holds none.
"""
from __future__ import annotations

import json
import os

from services.gateway.tool_calls import ToolCall, may_start_call, parse_forced, parse_free, resolve_parser
from services.gateway.tool_protocol import ToolRequest


def chat_template_text(settings) -> str | None:
    """The model's chat template read from its files (the GGUF's converted tokenizer, which the tokenizer workers
    cache at start); None when there is none yet. A file read: the gateway loads no tokenizer."""
    if settings.load_format == "dummy":
        return None
    from engine.model_config import cache_dir, resolve_model_path

    path = resolve_model_path(settings.model)
    folder = cache_dir("tokenizers", path) if path.endswith(".gguf") else path
    try:
        with open(os.path.join(folder, "chat_template.jinja"), encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        pass
    try:
        with open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8") as fh:
            template = json.load(fh).get("chat_template")
    except (OSError, ValueError):
        return None
    return template if isinstance(template, str) else None


def parser_for(settings) -> str:
    """The tool-call parser a gateway uses; "auto" reads the model's chat template (the gateway calls this once)."""
    if settings.tool_call_parser != "auto":
        return resolve_parser(settings.tool_call_parser, None)
    return resolve_parser("auto", chat_template_text(settings))


def parse_choice(text: str, tools: ToolRequest, parser: str) -> tuple[str | None, list[ToolCall]]:
    if tools.forced:
        calls = parse_forced(text, tools.choice, tools.name)
        return (None if calls else text), calls
    content, calls = parse_free(text, parser)
    return (content or None) if calls else text, calls


def apply_to_response(body: dict, tools: ToolRequest, parser: str) -> dict:
    """Rewrite a chat.completion body's choices whose text holds tool calls."""
    for choice in body["choices"]:
        content, calls = parse_choice(choice["message"]["content"], tools, parser)
        if calls:
            choice["message"]["content"] = content
            choice["message"]["tool_calls"] = [c.message() for c in calls]
            if choice["finish_reason"] == "stop":
                choice["finish_reason"] = "tool_calls"
    return body


def _choice(index: int, delta: dict, finish_reason: str | None = None) -> dict:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


class ToolStream:
    """Per-choice state of a streamed chat answer that parses tool calls."""

    def __init__(self, tools: ToolRequest, parser: str, num_choices: int):
        self.tools, self.parser = tools, parser
        self.sent = [0] * num_choices  # characters of each choice's text sent as content
        self.held = [False] * num_choices  # a call may have begun: nothing more streams as content

    def on_delta(self, index: int, text: str, finish_reason: str | None) -> list[dict]:
        """The chunk choices to send for choice `index`, whose whole text so far is `text`."""
        out = []
        if not self.tools.forced and not self.held[index]:
            cut = may_start_call(text, self.parser)
            if cut < len(text) and self._started(text[cut:]):
                self.held[index] = True
            if cut > self.sent[index]:
                out.append(_choice(index, {"content": text[self.sent[index]:cut]}))
                self.sent[index] = cut
        if finish_reason is None:
            return out
        content, calls = parse_choice(text, self.tools, self.parser)
        if not calls:
            if len(text) > self.sent[index]:
                out.append(_choice(index, {"content": text[self.sent[index]:]}))
            out.append(_choice(index, {}, finish_reason))
            return out
        for k, call in enumerate(calls):
            out.append(_choice(index, {"tool_calls": [{"index": k, "id": call.id, "type": "function",
                                                       "function": {"name": call.name, "arguments": ""}}]}))
            out.append(_choice(index, {"tool_calls": [{"index": k, "function": {"arguments": call.arguments}}]}))
        out.append(_choice(index, {}, "tool_calls" if finish_reason == "stop" else finish_reason))
        return out

    def _started(self, rest: str) -> bool:
        """Past the cut is a whole tag or a JSON start, not just a tag's first characters."""
        return self.parser == "llama3_json" or rest.startswith("<tool_call>")
