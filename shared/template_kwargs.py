"""Which chat_template_kwargs a client may pass to the model's chat template.

The template is the model's own; a client can only set a few known switches to plain values. Never a
template (chat_template), never a value the template could loop over: with these, rendering is bounded
by the messages, which are bounded by the body size. Checked by the gateway and again by the tokenizer.
"""
from __future__ import annotations

from shared.errors import InvalidParameter

ALLOWED = ("enable_thinking", "thinking", "reasoning_effort")
MAX_STRING_CHARS = 64


def check_template_kwargs(kwargs) -> dict:
    """kwargs itself when every key is allowed and every value a bool, int, float or short string."""
    if not isinstance(kwargs, dict):
        raise InvalidParameter("chat_template_kwargs must be an object", param="chat_template_kwargs")
    for key, value in kwargs.items():
        param = f"chat_template_kwargs.{key}"
        if key not in ALLOWED:
            raise InvalidParameter(f"{param} is not supported (allowed: {', '.join(ALLOWED)}; a client's own "
                                   "chat template never is)", param=param)
        plain = isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= MAX_STRING_CHARS)
        if not plain:
            raise InvalidParameter(f"{param} must be a boolean, a number or a string of at most "
                                   f"{MAX_STRING_CHARS} characters", param=param)
    return kwargs
