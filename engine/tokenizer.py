"""Load the model's tokenizer; a GGUF tokenizer is converted once and cached (10 s -> 0.2 s)."""
from __future__ import annotations

import os
import shutil

from shared.settings import Settings

from engine.model_config import cache_dir, resolve_model_path


def load_tokenizer(settings: Settings):
    from transformers import AutoTokenizer

    path = resolve_model_path(settings.model)
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
