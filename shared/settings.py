"""One settings object for every service: defaults < TOML file < environment (FERRY_*) < CLI flags."""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, fields

import tomllib

DEFAULT_MODEL = "SmolLM2-135M-Instruct"


@dataclass(slots=True)
class Settings:
    # what to serve
    model: str = DEFAULT_MODEL  # a safetensors directory, a .gguf file, or the default model's name
    served_model_name: str = ""  # defaults to the model's base name
    load_format: str = "auto"  # auto | safetensors | gguf | dummy
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda
    max_model_len: int = 0  # 0: the model's own context length
    hf_config: str = ""  # with load_format=dummy: a config.json path, or a named shape (llama-3.1-8b)
    seed: int = 0

    # engine
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 4096
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9
    kv_cache_bytes: int = 512 * 1024 * 1024  # the KV pool's size on the CPU
    num_kv_blocks: int = 0  # >0 overrides the sizing above (tests)
    tensor_parallel_size: int = 1
    enforce_eager: bool = False  # no CUDA graphs

    # processes and sockets
    host: str = "127.0.0.1"
    port: int = 8000
    run_dir: str = ""  # where ipc:// sockets live; default: a fresh temp dir from the launcher
    num_tokenizers: int = 1
    gateway_id: int = 0
    tokenizer_id: int = 0
    rank: int = 0
    heartbeat_interval: float = 0.5
    peer_timeout: float = 5.0
    max_body_bytes: int = 4 * 1024 * 1024
    log_level: str = "INFO"

    # liveness and drain (issue 13)
    gateway_timeout: float = 1.2  # a gateway silent this long is dead: the scheduler aborts its requests
    shutdown_timeout: float = 30.0  # SIGTERM: seconds requests in flight may take to finish before they are ended

    def resolved_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        base = os.path.basename(self.model.rstrip("/"))
        return base.removesuffix(".gguf").split(".Q")[0] if base.endswith(".gguf") else base

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _coerce(kind: type, raw):
    if kind is bool and isinstance(raw, str):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return kind(raw)


def _kind(f: dataclasses.Field) -> type:
    return {"int": int, "float": float, "bool": bool, "str": str}[str(f.type)]


def load_settings(argv: list[str] | None = None, **overrides) -> Settings:
    """Parse CLI flags (--max-num-seqs 8 ...), FERRY_* environment variables and --config FILE.toml."""
    parser = argparse.ArgumentParser(add_help=True)
    parser.add_argument("--config", default=os.environ.get("FERRY_CONFIG", ""), help="a TOML settings file")
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        if _kind(f) is bool:
            parser.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(flag, dest=f.name, default=None, type=_kind(f))
    args = parser.parse_args(argv if argv is not None else [])
    values: dict = {}
    if args.config:
        with open(args.config, "rb") as fh:
            values.update(tomllib.load(fh))
    for f in fields(Settings):
        env = os.environ.get("FERRY_" + f.name.upper())
        if env is not None:
            values[f.name] = env
        cli = getattr(args, f.name)
        if cli is not None:
            values[f.name] = cli
    values.update(overrides)
    known = {f.name: f for f in fields(Settings)}
    unknown = set(values) - set(known)
    if unknown:
        raise SystemExit(f"unknown settings: {', '.join(sorted(unknown))}")
    return Settings(**{k: _coerce(_kind(known[k]), v) for k, v in values.items()})
