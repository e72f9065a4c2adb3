"""Turning a request's grammar (SamplingParams.grammar_kind / grammar_spec) into xgrammar objects.

check_grammar() needs no tokenizer: the gateway calls it so that a spec xgrammar cannot parse is a 400 naming the
parameter before anything is queued. GrammarCompiler compiles against the runner's vocabulary and keeps the compiled
grammars in an LRU keyed by (kind, canonical spec): a schema sent again costs nothing.
"""
from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections import OrderedDict
from functools import lru_cache

import xgrammar as xgr

_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+: ")  # xgrammar's "[13:38:31] /project/cpp/x.cc:94: " before a message
from engine.grammar_gate import GRAMMAR_CACHE_SIZE as CACHE_SIZE  # compiled grammars kept; a schema's: kB to MB


def _choice_ebnf(spec: str) -> str:
    """A choice list as an EBNF alternation of string literals (JSON escapes are EBNF escapes too)."""
    choices = json.loads(spec)
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def _grammar(kind: str, spec: str) -> xgr.Grammar:
    if kind == "json_schema":
        return xgr.Grammar.from_json_schema(spec, any_whitespace=False)
    if kind == "json_object":  # OpenAI's json_object is an object (the builtin JSON grammar allows any value)
        return xgr.Grammar.from_json_schema('{"type": "object"}', any_whitespace=False)
    if kind == "regex":
        return xgr.Grammar.from_regex(spec)
    if kind == "choice":
        return xgr.Grammar.from_ebnf(_choice_ebnf(spec))
    if kind == "grammar":
        return xgr.Grammar.from_ebnf(spec)
    raise ValueError(f"unknown grammar kind {kind!r}")


@lru_cache(maxsize=CACHE_SIZE)
def check_grammar(kind: str, spec: str) -> str | None:
    """None when xgrammar can build the grammar, else its complaint (first line, bounded)."""
    try:
        _grammar(kind, spec)
    except Exception as e:  # xgrammar raises RuntimeError, ValueError, or its own types for a bad spec
        line = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        return _LOG_PREFIX.sub("", line)[:300]
    return None


class GrammarCompiler:
    """Compiles specs against one tokenizer's vocabulary (padded to the model's logits width)."""

    def __init__(self, tokenizer, vocab_size: int):
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.vocab_size = vocab_size
        self._compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        self._cache: OrderedDict[tuple[str, str], xgr.CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()  # the runner's thread and the compile thread (engine/structured/decoding.py)

    def compile(self, kind: str, spec: str) -> xgr.CompiledGrammar:
        key = (kind, spec)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        compiled = self._compiler.compile_grammar(_grammar(kind, spec))  # outside the lock: it may take seconds
        with self._lock:
            self._cache[key] = compiled
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled


def grammar_tokenizer(settings):
    """The tokenizer grammars are compiled against: --grammar-tokenizer's model, else the served one."""
    from engine.tokenizer import load_tokenizer

    if settings.grammar_tokenizer:
        settings = dataclasses.replace(settings, model=settings.grammar_tokenizer, load_format="auto")
    return load_tokenizer(settings)
