"""Load the model's tokenizer; a GGUF tokenizer is converted once and cached (10 s -> 0.2 s)."""
from __future__ import annotations

import hashlib
import os
import shutil

from shared.settings import Settings

from engine.model_config import resolve_model_path


def _cache_dir(gguf_path: str) -> str:
    st = os.stat(gguf_path)
    key = hashlib.sha256(f"{os.path.abspath(gguf_path)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    root = os.environ.get("FERRY_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "ferry")
    return os.path.join(root, "tokenizers", key)


def load_tokenizer(settings: Settings):
    from transformers import AutoTokenizer

    path = resolve_model_path(settings.model)
    if not path.endswith(".gguf"):
        return AutoTokenizer.from_pretrained(path)
    cache = _cache_dir(path)
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
