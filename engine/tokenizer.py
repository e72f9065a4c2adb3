"""Load the model's tokenizer; a GGUF tokenizer is converted once and cached (10 s -> 0.2 s)."""
from __future__ import annotations

import os
import shutil
import zlib

from engine.model_config import cache_dir, load_model_config, resolve_model_path
from shared.settings import Settings


class DummyTokenizer:
    """For random-weight models (--load-format dummy), which come with no tokenizer: id N is the text
    " tN", so any id of the vocabulary decodes and "tN" encodes back to N; other words map to a
    stable hash modulo the vocabulary. Only the surface the services use is here."""

    def __init__(self, vocab_size: int, bos_token_id: int | None = None, eos_token_ids: list[int] | None = None):
        self.vocab_size = vocab_size
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_ids[0] if eos_token_ids else None
        self.all_special_ids = sorted({t for t in [bos_token_id, *(eos_token_ids or [])] if t is not None})

    def __len__(self) -> int:
        return self.vocab_size

    def _word_id(self, word: str) -> int:
        if word[:1] == "t" and word[1:].isdigit() and int(word[1:]) < self.vocab_size:
            return int(word[1:])
        return zlib.crc32(word.encode()) % self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True, **_) -> list[int]:
        ids = [self._word_id(w) for w in text.split()]
        return [self.bos_token_id, *ids] if add_special_tokens and self.bos_token_id is not None else ids

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool = False, **_) -> str:
        special = set(self.all_special_ids) if skip_special_tokens else ()
        return "".join(f" t{int(t)}" for t in ids if int(t) not in special)

    def convert_ids_to_tokens(self, ids):
        return f"t{int(ids)}" if isinstance(ids, int) else [f"t{int(t)}" for t in ids]

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = True,
                            **_):
        text = "\n".join(f"{m['role']}: {m.get('content') or ''}" for m in messages)
        if add_generation_prompt:
            text += "\nassistant:"
        return self.encode(text, add_special_tokens=False) if tokenize else text


def load_tokenizer(settings: Settings):
    if settings.load_format == "dummy":
        cfg = load_model_config(settings)
        return DummyTokenizer(cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_ids)
    from transformers import AutoTokenizer

    path = resolve_model_path(settings.model, settings.download)
    if not path.endswith(".gguf"):
        return AutoTokenizer.from_pretrained(path)
    cache = cache_dir("tokenizers", path)
    if os.path.exists(os.path.join(cache, "tokenizer_config.json")):
        return AutoTokenizer.from_pretrained(cache)
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    tmp = f"{cache}.tmp{os.getpid()}"
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, cache)  # atomic: concurrent tokenizer workers may race to fill the cache
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process got there first
    return tok


def chat_token_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = True, **template_kwargs) -> list[int]:
    """Render the chat template to text, then encode it without adding specials: the template has them."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **template_kwargs)
    return list(tokenizer.encode(text, add_special_tokens=False))
