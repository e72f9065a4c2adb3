"""What Ollama's /api/tags, /api/show and /api/ps say about a served model, from its files and config only.

The facts are read once per gateway, off the event loop (a GGUF file's metadata can take seconds to parse the
first time), from the same settings the runners load the model with. No weights are read.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from engine.memory_plan import parameter_count
from engine.model_config import ModelConfig, load_model_config, resolve_model_path

log = logging.getLogger("ferry.gateway")
_GGUF_TYPE = re.compile(r"\.(I?Q\d\w*|F16|F32|BF16)\.gguf$", re.IGNORECASE)
_DTYPE_LEVEL = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


@dataclass(slots=True)
class ModelFacts:
    name: str
    path: str = ""
    format: str = ""  # gguf | safetensors | dummy
    size: int = 0  # bytes of the model's files
    digest: str = ""  # sha256 of the files' identity (path, size, mtime): hashing gigabytes per start is too slow
    modified_at: str = ""
    quantization: str = ""
    config: ModelConfig | None = None
    parameters: int = 0

    def details(self) -> dict:
        family = self.config.architecture if self.config else ""
        n = self.parameters
        size = f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n else ""
        return {"parent_model": "", "format": self.format, "family": family, "families": [family] if family else [],
                "parameter_size": size, "quantization_level": self.quantization}

    def card(self) -> dict:
        """A model as /api/tags lists it."""
        return {"name": self.name, "model": self.name, "modified_at": self.modified_at, "size": self.size,
                "digest": self.digest, "details": self.details()}

    def model_info(self, context_length: int) -> dict:
        """GGUF-style keys, as Ollama's /api/show gives them."""
        c = self.config
        if c is None:
            return {}
        a = c.architecture
        return {"general.architecture": a, "general.basename": self.name, "general.parameter_count": self.parameters,
                f"{a}.context_length": context_length, f"{a}.embedding_length": c.hidden_size,
                f"{a}.feed_forward_length": c.intermediate_size, f"{a}.block_count": c.num_layers,
                f"{a}.attention.head_count": c.num_heads, f"{a}.attention.head_count_kv": c.num_kv_heads,
                f"{a}.attention.key_length": c.head_dim, f"{a}.attention.value_length": c.head_dim,
                f"{a}.attention.layer_norm_rms_epsilon": c.rms_norm_eps, f"{a}.rope.freq_base": c.rope_theta,
                f"{a}.vocab_size": c.vocab_size}


def _files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith((".safetensors", ".bin", ".json")))


def model_facts(settings, name: str) -> ModelFacts:
    """Never raises: a model whose files cannot be read is listed with what is known (its name)."""
    facts = ModelFacts(name)
    try:
        facts.config = cfg = load_model_config(settings)
        facts.parameters = parameter_count(cfg)
        facts.format = "dummy" if settings.load_format == "dummy" else cfg.load_format
        if cfg.path:
            facts.path = path = resolve_model_path(settings.model)
            stats = [os.stat(f) for f in _files(path)]
            facts.size = sum(s.st_size for s in stats)
            mtime = max((s.st_mtime for s in stats), default=0.0)
            facts.modified_at = datetime.fromtimestamp(mtime, timezone.utc).isoformat()
            identity = f"{os.path.abspath(path)}:{facts.size}:{mtime}"
            facts.digest = hashlib.sha256(identity.encode()).hexdigest()
        match = _GGUF_TYPE.search(facts.path)
        facts.quantization = match.group(1).upper() if match else _DTYPE_LEVEL.get(settings.dtype, "")
    except (OSError, ValueError, KeyError) as e:
        log.warning("model facts for %s: %s", name, e)
    return facts
