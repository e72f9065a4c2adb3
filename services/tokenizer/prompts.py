"""From a TokenizeRequest to prompt token ids and an EngineRequest that fits the model (no sockets here)."""
from __future__ import annotations

import time

from engine.tokenizer import chat_token_ids
from services.tokenizer.grammar_checks import check_request_grammars
from services.tokenizer.tool_prompt import history_fields, with_tools
from shared.codec import pack_ids, unpack_ids
from shared.errors import InvalidParameter
from shared.messages import EngineRequest, TokenizeRequest
from shared.template_kwargs import check_template_kwargs

ROLES = ("system", "developer", "user", "assistant", "tool")


def flatten_content(content, where: str) -> str:
    """OpenAI message content is a string or an array of parts; we take text parts only."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InvalidParameter(f"{where}: unsupported content part {kind!r} (text only)", param="messages")
        return "\n".join(texts)
    raise InvalidParameter(f"{where}: content must be a string or an array of parts", param="messages")


def normalize_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise InvalidParameter("messages must be a non-empty array", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidParameter(f"messages[{i}] must be an object", param="messages")
        role = m.get("role")
        if role not in ROLES:
            raise InvalidParameter(f"messages[{i}].role must be one of {', '.join(ROLES)}", param="messages")
        # The templates we ship know "system", not OpenAI's newer "developer".
        out.append({"role": "system" if role == "developer" else role,
                    "content": flatten_content(m.get("content"), f"messages[{i}]"), **history_fields(m, i)})
    return out


class PromptBuilder:
    def __init__(self, tokenizer, max_model_len: int, vocab_size: int):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size

    def prompt_ids(self, req: TokenizeRequest) -> list[int]:
        if req.messages is not None:
            messages = normalize_messages(req.messages)
            kwargs = check_template_kwargs(req.chat_template_kwargs)  # a peer's message is checked again here
            if req.continue_final_message:  # the answer goes on from the last message, which stays open
                kwargs["continue_final_message"] = True
            messages, tool_kwargs = with_tools(messages, req.tools, self.tokenizer)  # issue 15
            return chat_token_ids(self.tokenizer, messages, req.add_generation_prompt, **kwargs, **tool_kwargs)
        if req.prompt is not None:
            if req.add_special_tokens is not None:
                return list(self.tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens))
            return list(self.tokenizer.encode(req.prompt))
        if req.prompt_token_ids is not None:
            ids = unpack_ids(req.prompt_token_ids).tolist()
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise InvalidParameter(f"prompt token id {bad[0]} is outside the vocabulary "
                                       f"(size {self.vocab_size})", param="prompt")
            return ids
        raise InvalidParameter("the request has no prompt", param="prompt")

    def prepare(self, req: TokenizeRequest) -> EngineRequest:
        """Tokenize and check the request against the model's limits (its params were validated by the gateway);
        resolves a left-out max_tokens. Raises InvalidParameter."""
        check_request_grammars(req)  # issue 15: before the work of tokenizing
        ids = self.prompt_ids(req)
        req.params.check_length(len(ids), self.max_model_len, self.vocab_size)
        params = req.params.with_max_tokens_for(len(ids), self.max_model_len)
        return EngineRequest(req.request_id, req.gateway_id, pack_ids(ids), params, time.time())
