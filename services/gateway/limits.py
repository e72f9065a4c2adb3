"""The caps on one request (settings max_n, max_stop_strings, ...): what the parser enforces beyond types."""
from __future__ import annotations

from dataclasses import dataclass, fields

from shared.settings import Settings

_DEFAULTS = Settings()  # one place for the defaults: the settings' own


@dataclass(slots=True, frozen=True)
class RequestLimits:
    max_n: int = _DEFAULTS.max_n
    max_prompts_per_request: int = _DEFAULTS.max_prompts_per_request
    max_seqs_per_request: int = _DEFAULTS.max_seqs_per_request
    max_stop_strings: int = _DEFAULTS.max_stop_strings
    max_stop_string_chars: int = _DEFAULTS.max_stop_string_chars
    max_stop_token_ids: int = _DEFAULTS.max_stop_token_ids
    max_logit_bias: int = _DEFAULTS.max_logit_bias
    max_json_depth: int = _DEFAULTS.max_json_depth
    max_grammar_chars: int = _DEFAULTS.max_grammar_chars  # issue 15

    @classmethod
    def of(cls, settings) -> "RequestLimits":
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})
