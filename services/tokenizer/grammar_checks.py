"""The tokenizer worker builds each request's grammars with xgrammar before the request goes on (issue 15).

The worker has the vocabulary and the heavy libraries loaded already, so the gateway's event loop never waits for
xgrammar: what it cannot build is a 400 naming the parameter it came from (TokenizeRequest.grammar_param, or the
tool whose parameters it is). The runner compiles the same specs again against the vocabulary, cached by spec.
"""
from __future__ import annotations

import json

from shared.errors import InvalidParameter
from shared.messages import TokenizeRequest


def check_request_grammars(req: TokenizeRequest) -> None:
    for i, tool in enumerate(req.tools):
        params = tool.get("function", {}).get("parameters") if isinstance(tool, dict) else None
        if params is not None:
            _check("json_schema", json.dumps(params, ensure_ascii=False), f"tools[{i}].function.parameters")
    p = req.params
    if p.grammar_kind:
        _check(p.grammar_kind, p.grammar_spec, req.grammar_param or "structured_outputs")


def _check(kind: str, spec: str, param: str) -> None:
    from engine.structured.grammars import check_grammar  # xgrammar: imported at the first grammar, not at start

    complaint = check_grammar(kind, spec)
    if complaint is not None:
        raise InvalidParameter(f"{param} cannot be compiled: {complaint}", param=param)
