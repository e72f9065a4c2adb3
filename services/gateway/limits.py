"""The caps on one request (settings max_n, max_stop_strings, ...): what the parser enforces beyond types."""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(slots=True, frozen=True)
class RequestLimits:
    max_n: int = 128
    max_prompts_per_request: int = 128
    max_seqs_per_request: int = 256
    max_stop_strings: int = 16
    max_stop_string_chars: int = 512
    max_stop_token_ids: int = 1024
    max_logit_bias: int = 1024
    max_json_depth: int = 32

    @classmethod
    def of(cls, settings) -> "RequestLimits":
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})
