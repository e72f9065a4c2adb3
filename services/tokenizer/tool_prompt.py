"""Tools and tool-call history into the prompt (issue 15).

A chat template that renders tools (its source mentions `tools`) gets them through apply_chat_template(tools=...),
and assistant tool calls with their arguments as objects, as such templates expect. A template that ignores them (the
default model's) must not drop them silently: ferry writes them in the Hermes style that Qwen2.5 and many
fine-tunes know, a "# Tools" section in the system message, assistant calls as <tool_call> JSON lines and tool
results as <tool_response> blocks, which the "hermes" tool-call parser reads back.
"""
from __future__ import annotations

import json

from shared.errors import InvalidParameter

HERMES_TOOLS = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML \
tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def _bad(msg: str):
    raise InvalidParameter(msg, param="messages")


def history_fields(m: dict, i: int) -> dict:
    """The tool fields of message i, checked: an assistant's tool_calls, a tool message's tool_call_id and name."""
    out = {}
    calls = m.get("tool_calls")
    if calls is not None:
        if m.get("role") != "assistant" or not isinstance(calls, list):
            _bad(f"messages[{i}].tool_calls must be an array on an assistant message")
        checked = []
        for j, c in enumerate(calls):
            fn = c.get("function") if isinstance(c, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) \
                    or not isinstance(fn.get("arguments", ""), str):
                _bad(f"messages[{i}].tool_calls[{j}] must be {{id, type, function: {{name, arguments (a string)}}}}")
            checked.append({"id": str(c.get("id") or f"call_{i}_{j}"), "type": "function",
                            "function": {"name": fn["name"], "arguments": fn.get("arguments") or "{}"}})
        out["tool_calls"] = checked
    for key in ("tool_call_id", "name"):
        if m.get(key) is not None:
            if not isinstance(m[key], str):
                _bad(f"messages[{i}].{key} must be a string")
            out[key] = m[key]
    return out


def renders_tools(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and "tools" in template


def _arguments(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text  # the client's own history: passed on as it is


def with_tools(messages: list[dict], tools: list[dict], tokenizer) -> tuple[list[dict], dict]:
    """The messages to render and the extra template arguments."""
    has_history = any("tool_calls" in m or m["role"] == "tool" for m in messages)
    if not tools and not has_history:
        return messages, {}
    if renders_tools(tokenizer):
        out = []
        for m in messages:
            if "tool_calls" in m:
                m = {**m, "tool_calls": [{**c, "function": {**c["function"],
                                                            "arguments": _arguments(c["function"]["arguments"])}}
                                         for c in m["tool_calls"]]}
            out.append(m)
        return out, ({"tools": tools} if tools else {})
    out = []
    for m in messages:
        if "tool_calls" in m:
            calls = "\n".join("<tool_call>\n" + json.dumps({"name": c["function"]["name"],
                                                            "arguments": _arguments(c["function"]["arguments"])},
                                                           ensure_ascii=False) + "\n</tool_call>"
                              for c in m["tool_calls"])
            content = (m["content"] + "\n" if m["content"] else "") + calls
            out.append({"role": "assistant", "content": content})
        elif m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    if tools:
        section = HERMES_TOOLS.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + section}
        else:
            out.insert(0, {"role": "system", "content": section})
    return out, {}
