"""`tools`, `tool_choice` and `parallel_tool_calls` of a chat request (issue 15).

Every tool is checked (a function with a name and, optionally, a JSON-schema `parameters` that xgrammar can compile);
`tool_choice` "required" or a named function is enforced with a grammar, so the arguments always match the schema:
"required" generates a JSON array of {"name", "arguments"} calls (one item unless parallel calls are allowed), a named
function generates its arguments object alone. "auto" lets the model write free text that the tool-call parser reads
(services/gateway/tool_calls.py); "none" leaves the tools out of the prompt and parses nothing.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from services.gateway.body_checks import bad as _bad
from services.gateway.body_checks import param_name
from services.gateway.structured_protocol import canonical_schema, check_size

TOOL_FIELDS = ("tools", "tool_choice", "parallel_tool_calls")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_FUNCTION_KEYS = {"name", "description", "parameters", "strict"}
MAX_TOOLS = 128
EMPTY_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(slots=True)
class ToolRequest:
    tools: list[dict] = field(default_factory=list)  # OpenAI shape, checked: [{"type": "function", "function": ...}]
    choice: str = "auto"  # none | auto | required | named
    name: str = ""  # the function of a named choice
    parallel: bool = True

    @property
    def forced(self) -> bool:
        return self.choice in ("required", "named")

    @property
    def parses(self) -> bool:
        """The output is read for tool calls."""
        return bool(self.tools) and self.choice != "none"

    def parameters(self, name: str) -> dict:
        for t in self.tools:
            if t["function"]["name"] == name:
                return t["function"].get("parameters") or EMPTY_PARAMETERS
        raise KeyError(name)


def _tool(i: int, t, max_chars: int) -> dict:
    where = f"tools[{i}]"
    if not isinstance(t, dict):
        _bad(where, "must be an object")
    if t.get("type") != "function":
        _bad(f"{where}.type", f"must be \"function\", got {param_name(t.get('type'))!r}")
    if set(t) - {"type", "function"}:
        _bad(where, f"has an unknown field {param_name(sorted(set(t) - {'type', 'function'})[0])!r}")
    fn = t.get("function")
    if not isinstance(fn, dict):
        _bad(f"{where}.function", "must be an object")
    unknown = set(fn) - _FUNCTION_KEYS
    if unknown:
        _bad(f"{where}.function", f"has an unknown field {param_name(sorted(unknown)[0])!r}")
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        _bad(f"{where}.function.name", "must be 1 to 64 letters, digits, '_', '.' or '-'")
    if fn.get("description") is not None and not isinstance(fn["description"], str):
        _bad(f"{where}.function.description", "must be a string")
    if fn.get("strict") is not None and not isinstance(fn["strict"], bool):
        _bad(f"{where}.function.strict", "must be a boolean")
    out = {"name": name}
    if fn.get("description"):
        out["description"] = fn["description"]
    if fn.get("parameters") is not None:
        param = f"{where}.function.parameters"
        spec = canonical_schema(fn["parameters"], param)
        check_size(spec, param, max_chars)  # compiled by the tokenizer worker (services/tokenizer/grammar_checks.py)
        out["parameters"] = json.loads(spec)
    return {"type": "function", "function": out}


def _choice(raw, names: list[str]) -> tuple[str, str]:
    if raw is None:
        return ("auto" if names else "none"), ""
    if isinstance(raw, str):
        if raw not in ("none", "auto", "required"):
            _bad("tool_choice", f"must be none, auto, required or a named function, got {param_name(raw)!r}")
        if raw != "none" and not names:
            _bad("tool_choice", f"is {raw!r} but the request has no tools")
        return raw, ""
    if not isinstance(raw, dict) or raw.get("type") != "function" or not isinstance(raw.get("function"), dict):
        _bad("tool_choice", 'must be none, auto, required or {"type": "function", "function": {"name": ...}}')
    name = raw["function"].get("name")
    if name not in names:
        _bad("tool_choice.function.name", f"names no tool of the request: {param_name(name)!r}")
    return "named", name


def parse_tools(body: dict, max_chars: int) -> ToolRequest | None:
    """None when the request has no tool fields. Raises InvalidParameter."""
    if all(body.get(k) is None for k in TOOL_FIELDS):
        return None
    raw = body.get("tools")
    if raw is not None and not isinstance(raw, list):
        _bad("tools", "must be an array of tools")
    raw = raw or []
    if len(raw) > MAX_TOOLS:
        _bad("tools", f"may hold at most {MAX_TOOLS} tools, got {len(raw)}")
    if len(json.dumps(raw)) > max_chars:
        _bad("tools", f"may be at most {max_chars} characters of JSON")
    tools = [_tool(i, t, max_chars) for i, t in enumerate(raw)]
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        _bad("tools", "must not name the same function twice")
    choice, name = _choice(body.get("tool_choice"), names)
    parallel = body.get("parallel_tool_calls", True)
    if parallel is None:
        parallel = True
    if not isinstance(parallel, bool):
        _bad("parallel_tool_calls", "must be a boolean")
    return ToolRequest(tools, choice, name, parallel)


def forced_grammar(req: ToolRequest) -> tuple[str, str] | None:
    """The JSON schema that enforces a required or named tool choice; None for none and auto."""
    if req.choice == "named":
        return "json_schema", canonical_schema(req.parameters(req.name), "tool_choice")
    if req.choice != "required":
        return None
    calls = [{"type": "object", "properties": {"name": {"const": t["function"]["name"]},
                                               "arguments": req.parameters(t["function"]["name"])},
              "required": ["name", "arguments"], "additionalProperties": False} for t in req.tools]
    schema = {"type": "array", "items": calls[0] if len(calls) == 1 else {"anyOf": calls}, "minItems": 1}
    if not req.parallel:
        schema["maxItems"] = 1
    return "json_schema", canonical_schema(schema, "tools")


def structured_request(body: dict, chat: bool, params, max_chars: int) -> tuple[ToolRequest | None, str]:
    """Read the structured-output and tool fields, set params' grammar from them; returns the tool request and the
    parameter the grammar came from (for the tokenizer worker's errors)."""
    from services.gateway.structured_protocol import parse_structured

    structured = parse_structured(body, max_chars)
    tools = parse_tools(body, max_chars) if chat else None
    forced = forced_grammar(tools) if tools is not None else None
    if forced is not None and structured is not None:
        _bad(structured[2], f"cannot be combined with tool_choice {tools.choice!r}, which sets the output's grammar")
    if tools is not None and tools.parses and body.get("stream") and params.logprobs is not None:
        _bad("logprobs", "is not supported with tools when streaming (the text of a tool call is held back)")
    grammar = forced or (structured[:2] if structured is not None else None)
    if grammar is not None:
        params.grammar_kind, params.grammar_spec = grammar
        params.validate()
    return tools, ("tools" if forced else structured[2] if structured else "")
