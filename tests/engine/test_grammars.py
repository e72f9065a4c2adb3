"""Issue 15: each grammar kind means what its request field says, and a bad spec is a complaint, not an exception."""
import json

import pytest
from xgrammar.testing import _is_grammar_accept_string as accepts

from engine.structured.grammars import _grammar, check_grammar


@pytest.mark.parametrize("kind, spec, good, bad", [
    ("json_object", "", '{"a": [1, 2], "b": {"c": null}}', "[1, 2]"),
    ("json_schema", json.dumps({"type": "object", "properties": {"n": {"type": "integer", "maximum": 9}},
                                "required": ["n"]}), '{"n": 7}', '{"n": 12}'),
    ("regex", r"[a-z]{2}\d", "ab1", "abc"),
    ("choice", json.dumps(["yes", 'say "no"', "ünï"]), 'say "no"', "maybe"),
    ("choice", json.dumps(["yes", 'say "no"', "ünï"]), "ünï", "yes "),
    ("grammar", 'root ::= "a" root | "b"', "aab", "aa"),
])
def test_kinds_accept_what_they_say(kind, spec, good, bad):
    g = _grammar(kind, spec)
    assert accepts(g, good) and not accepts(g, bad)


def test_bad_specs_are_complaints():
    assert check_grammar("json_schema", json.dumps({"type": "object"})) is None
    for kind, spec in [("json_schema", '{"type": "bogus"}'), ("regex", "[a-"), ("grammar", "root ::= nope"),
                       ("choice", "not json"), ("mystery", "")]:
        complaint = check_grammar(kind, spec)
        assert complaint and not complaint.startswith("["), (kind, complaint)  # the library's log prefix is cut
