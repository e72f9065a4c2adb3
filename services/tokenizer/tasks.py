"""The tokenizer worker's answers for vLLM's /tokenize, /detokenize and /tokenizer_info (issue 14).

/tokenize runs the very code a generation request runs (PromptBuilder.prompt_ids), so the ids it returns are
the ids the engine would receive for the same prompt or chat.
"""
from __future__ import annotations

from shared.codec import pack_ids
from shared.errors import InvalidParameter
from shared.messages import TokenizeReply, TokenizeRequest

TASKS = ("tokenize", "detokenize", "tokenizer_info")
INFO_FIELDS = ("bos_token", "eos_token", "pad_token", "unk_token", "chat_template")


def _text(value) -> str | None:
    return None if value is None else str(value)


def tokenizer_info(tokenizer, max_model_len: int) -> dict:
    """What lm-eval's RemoteTokenizer reads (eos_token, bos_token, pad_token, chat_template) and a little more."""
    info = {name: _text(getattr(tokenizer, name, None)) for name in INFO_FIELDS}
    info.update(tokenizer_class=type(tokenizer).__name__, model_max_length=max_model_len,
                vocab_size=len(tokenizer))
    return info


def answer(builder, req: TokenizeRequest) -> TokenizeReply:
    """Raises InvalidParameter for a request it cannot answer."""
    tok = builder.tokenizer
    reply = TokenizeReply(req.request_id, req.gateway_id, max_model_len=builder.max_model_len)
    if req.task == "tokenize":
        ids = builder.prompt_ids(req)
        reply.token_ids = pack_ids(ids)
        reply.token_strs = [str(t) for t in tok.convert_ids_to_tokens(ids)] if ids else []
    elif req.task == "detokenize":
        try:
            ids = builder.prompt_ids(req)  # checks the vocabulary
        except InvalidParameter as e:
            raise InvalidParameter(e.message, param="tokens") from None
        reply.text = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    elif req.task == "tokenizer_info":
        reply.info = tokenizer_info(tok, builder.max_model_len)
    else:
        raise InvalidParameter(f"unknown task {req.task!r}", param="task")
    return reply
