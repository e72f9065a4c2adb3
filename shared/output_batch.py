"""The detokenizer's one frame per gateway per step (tag 57; shared/messages.py is at its size limit).

One frame per step instead of one per request keeps a gateway with a thousand streams open reading a hundred
frames a second, not a hundred thousand, and lets it take a whole step's outputs per wake-up of its event loop.
"""
from __future__ import annotations

from dataclasses import dataclass

from shared.codec import message
from shared.messages import RequestOutput


@message(57)
@dataclass(slots=True)
class RequestOutputs:
    """detokenizer -> gateway: every RequestOutput of one TokenBatch for this gateway, in the batch's order."""

    gateway_id: int
    outputs: list[RequestOutput]
