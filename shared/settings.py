"""One settings object for every service: defaults < TOML file < environment (FERRY_*) < CLI flags."""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, fields

import tomllib

from shared.hub_names import is_hub_id
from shared.settings_check import check_settings, coerce

DEFAULT_MODEL = "SmolLM2-135M-Instruct"


@dataclass(slots=True)
class Settings:
    # what to serve
    model: str = DEFAULT_MODEL  # a safetensors directory, a .gguf file, or the default model's name
    served_model_name: str = ""  # defaults to the model's base name
    load_format: str = "auto"  # auto | safetensors | gguf | dummy
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    # issue 18: "" reads config.json's quantization_config; awq | gptq | compressed-tensors | fp8 override it
    # (fp8 on a bf16/fp16 checkpoint quantizes the linear layers while loading)
    quantization: str = ""
    kv_cache_dtype: str = "auto"  # auto: the model's dtype | fp8 (e4m3 with scales: twice the blocks)
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
    cuda_graph_max_tokens: int = 512  # steps with prompt tokens up to this many tokens replay a CUDA graph; 0: eager

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

    # HTTP edge and admission control (issue 13, the edge part)
    http_read_timeout: float = 30.0  # seconds for a request's head (from connect or the last answer), and its body
    max_connections: int = 2048  # open client connections; past it the longest-idle one is closed (capped by fds)
    max_header_bytes: int = 8190  # the request line and each header line
    api_key: str = ""  # comma-separated keys; empty (and no api_key_file): no key needed
    api_key_file: str = ""  # one key a line ('#' comments)
    metrics_require_key: bool = False  # /metrics needs a key too (/health never does)
    allowed_origins: str = ""  # CORS: comma-separated origins or "*"; empty: no CORS headers
    max_waiting_requests: int = 0  # requests waiting for their first token before new ones get 503; 0: no bound
    rate_limit_rpm: int = 0  # requests per minute per API key; 0: none
    rate_limit_tpm: int = 0  # prompt + generated tokens per minute per API key; 0: none
    request_timeout: float = 0.0  # seconds a generation request may take before it is ended and aborted; 0: none

    # request limits (issue 13, validation): a request over one is a 400 naming the parameter
    max_n: int = 128  # choices per prompt (n; best_of must equal it)
    max_prompts_per_request: int = 128  # prompts in one completions request
    max_seqs_per_request: int = 256  # prompts x n
    max_stop_strings: int = 16
    max_stop_string_chars: int = 512
    max_stop_token_ids: int = 1024
    max_logit_bias: int = 1024  # logit_bias entries
    max_json_depth: int = 32  # nesting of the request body

    # the inside (issue 13): who may talk to the sockets, and how much
    max_frame_bytes: int = 64 * 1024 * 1024  # a bigger frame disconnects its sender (ZMQ_MAXMSGSIZE)
    curve_keys_dir: str = ""  # tcp endpoints: a private (0700) directory with the cluster's CURVE key

    # liveness and drain (issue 13)
    gateway_timeout: float = 1.2  # a gateway silent this long is dead: the scheduler aborts its requests
    shutdown_timeout: float = 30.0  # SIGTERM: seconds requests in flight may take to finish before they are ended

    # several models in one server, models by name (issue 19b): shared/model_groups.py, engine/hub.py
    models: str = ""  # several models, comma-separated (what a repeated --model builds); each gets its own group
    models_file: str = ""  # several models from a .toml ([[models]] tables) or .json (a list) file
    model_group: int = -1  # the group this process serves (set by ferry serve / ferry supervisord-conf); -1: none
    model_aliases: str = ""  # comma-separated other names the (single) model answers to
    download: bool = True  # --model org/name missing from the caches is downloaded (unless HF_HUB_OFFLINE=1)
    allow_pull: bool = False  # POST /api/pull may download models into this host's Hugging Face cache
    # scheduling for latency (issue 17): decodes always run; prompt tokens fill what is left of a step
    max_prefill_tokens: int = 0  # prompt tokens one step may carry beside its decodes; 0: max_num_batched_tokens
    # observability (issue 16)
    log_format: str = "text"  # text | json: every process's log lines (the gateway's request lines included)
    # structured outputs and tool calling (issue 15)
    tool_call_parser: str = "auto"  # hermes | llama3_json | auto (picked from the chat template)
    grammar_tokenizer: str = ""  # the model whose tokenizer grammars are compiled against; "": --model (benchmarks
    # with dummy weights name the default model here, so that a grammar has real tokens to allow)
    max_grammar_chars: int = 65536  # a schema, regex, grammar or tools list longer than this is a 400
    # the first-token path (issue 17)
    trace_first_token: bool = False  # log each request's first token at every hop (benchmarks/first_token_hops.py)

    def resolved_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        if is_hub_id(self.model):  # org/name: served under the hub's name, as vLLM does
            return self.model
        base = os.path.basename(self.model.rstrip("/"))
        return base.removesuffix(".gguf").split(".Q")[0] if base.endswith(".gguf") else base

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


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
        elif f.name == "model":  # repeatable: --model A --model B serves both (the `models` setting)
            parser.add_argument(flag, dest=f.name, default=None, action="append")
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
    if args.model:  # one --model is the model; several are the models setting, each served by its own group
        values["model"] = args.model[0]
        if len(args.model) > 1:
            values["models"] = ",".join(args.model)
    values.update(overrides)
    known = {f.name: f for f in fields(Settings)}
    unknown = set(values) - set(known)
    if unknown:
        raise SystemExit(f"unknown settings: {', '.join(sorted(unknown))}")
    settings = Settings(**{k: coerce(k, _kind(known[k]), v) for k, v in values.items()})
    # every value in its range (shared/settings_check.py); with several models, the pairs per group (model_groups)
    return check_settings(settings, combinations=not (settings.models or settings.models_file))
