"""Several models in one server: each model is a *group*, its own scheduler, runner ranks, detokenizer and
tokenizer workers (tokenizers differ per model), with socket endpoints of its own: a run directory `m<i>` under
the server's (ipc), or a port range of its own above the base (tcp). The gateway holds one EngineClient per
group (services/gateway/model_router.py); nothing else in the pipeline knows there are several.

The list comes from --models-file (TOML `[[models]]` tables, or a JSON list of objects) or from several --model
flags (the `models` setting). With neither there is one group: the settings themselves, unchanged, so the
single-model server is exactly what it was. A group's processes are started with --model-group I and take their
settings from `group_settings` (services.runtime.start_service), so every process derives the same thing.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

import tomllib

from shared.settings import DEFAULT_MODEL, Settings
from shared.settings_check import check_settings
from shared.sockets import run_dir

# What an entry of a models file may set besides name, model (or path), aliases and gpus: what the model's
# own processes run with. Edge, admission and socket settings belong to the server.
PER_MODEL = ("load_format", "dtype", "device", "max_model_len", "hf_config", "seed", "block_size", "max_num_seqs",
             "max_num_batched_tokens", "enable_prefix_caching", "gpu_memory_utilization", "kv_cache_bytes",
             "num_kv_blocks", "tensor_parallel_size", "enforce_eager", "num_tokenizers", "download")
TCP_GROUP_STRIDE = 2000  # shared.sockets puts a group's endpoints at offsets 0..1999 above its base
_NAME = re.compile(r"^[\w.:/@+-]{1,200}$")  # what a client writes in "model" (org/name, llama3:8b, ...)
_TYPES = {f.name: f.type for f in dataclasses.fields(Settings)}


@dataclasses.dataclass(frozen=True, slots=True)
class ModelGroup:
    index: int
    name: str  # the served name: what /v1/models lists and responses echo
    aliases: tuple[str, ...]  # other names requests may use
    settings: Settings  # what this group's processes (and the gateway's client for it) run with
    gpus: str = ""  # CUDA_VISIBLE_DEVICES for the group's runner ranks; "": as the server was started

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def group_run_dir(base: str, index: int) -> str:
    """Where group `index` puts its sockets: RUN/m<index>, or tcp://HOST:BASE+2000*index."""
    if base.startswith("tcp://"):
        host, port = base[len("tcp://"):].rsplit(":", 1)
        return f"tcp://{host}:{int(port) + TCP_GROUP_STRIDE * index}"
    return os.path.join(base, f"m{index}")


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _fail(where: str, message: str):
    raise SystemExit(f"ferry: {where}: {message}")


def _load_file(path: str) -> list[dict]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        data = json.loads(raw) if path.endswith(".json") else tomllib.loads(raw.decode())
    except (OSError, ValueError) as e:
        _fail(f"models file {path}", str(e))
    entries = data.get("models") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        _fail(f"models file {path}", "needs a non-empty list of models ([[models]] tables, or a JSON list)")
    return entries


def _entries(settings: Settings) -> tuple[str, list[dict]]:
    if settings.models_file and (settings.models or settings.model != DEFAULT_MODEL):
        _fail("settings", "give either --models-file or --model, not both (the file lists every model)")
    if settings.served_model_name or settings.model_aliases:
        _fail("settings", "with several models, name them (and their aliases) in a --models-file")
    if settings.models_file:
        return f"models file {settings.models_file}", _load_file(settings.models_file)
    return "--model", [{"model": m} for m in _split(settings.models)]


def _typed(where: str, key: str, value):
    kind = _TYPES[key]
    ok = {"bool": isinstance(value, bool), "str": isinstance(value, str),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool)}[kind]
    if not ok:
        _fail(where, f"{key} must be a {kind}, got {value!r}")
    return float(value) if kind == "float" else value


def _names(where: str, value) -> tuple[str, ...]:
    names = _split(value) if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        _fail(where, "aliases must be a list of names")
    return tuple(names)


def _group(settings: Settings, base: str, index: int, where: str, entry: dict) -> ModelGroup:
    entry = {k.replace("-", "_"): v for k, v in entry.items()}
    unknown = set(entry) - {"name", "model", "path", "aliases", "gpus", *PER_MODEL}
    if unknown:
        _fail(where, f"unknown keys {sorted(unknown)} (allowed: name, model or path, aliases, gpus, "
                     f"{', '.join(PER_MODEL)})")
    model = entry.get("model", entry.get("path"))
    if not isinstance(model, str) or not model or ("model" in entry and "path" in entry):
        _fail(where, "each model needs one of model or path (a directory, a .gguf file or org/name)")
    overrides = {k: _typed(where, k, v) for k, v in entry.items() if k in PER_MODEL}
    gpus = entry.get("gpus", "")
    if isinstance(gpus, list) and all(isinstance(g, int) and not isinstance(g, bool) for g in gpus):
        gpus = ",".join(map(str, gpus))
    if not isinstance(gpus, str):
        _fail(where, f"gpus must be a list of GPU indices or a string like '0,1', got {gpus!r}")
    tp = overrides.get("tensor_parallel_size", settings.tensor_parallel_size)
    if gpus and len(_split(gpus)) != tp:
        _fail(where, f"{model}: {len(_split(gpus))} gpus for tensor_parallel_size {tp}")
    s = dataclasses.replace(settings, model=model, served_model_name=entry.get("name", ""), models="",
                            models_file="", model_group=index, model_aliases="",
                            run_dir=group_run_dir(base, index), **overrides)
    name = _typed(where, "served_model_name", s.resolved_name())
    aliases = _names(where, entry.get("aliases", []))
    s = dataclasses.replace(s, served_model_name=name, model_aliases=",".join(aliases))
    # its per-model values; the pairs (--rank against its tensor_parallel_size) only for the group this process runs
    check_settings(s, f"ferry: {where}: {model}", combinations=settings.model_group in (-1, index))
    return ModelGroup(index, name, aliases, s, gpus)


def _check_names(where: str, groups: list[ModelGroup]):
    seen: dict[str, str] = {}
    for g in groups:
        for n in g.names:
            if not _NAME.match(n):
                _fail(where, f"model name {n!r}: use letters, digits and . _ : / @ + - (at most 200)")
            if n in seen:
                _fail(where, f"the name {n!r} is given to {seen[n]!r} and {g.settings.model!r}: "
                             "name them apart (name = ... in a models file)")
            seen[n] = g.settings.model


def model_groups(settings: Settings) -> list[ModelGroup]:
    """Every model this server serves, in order (the first answers requests that name no model)."""
    if not settings.models and not settings.models_file:
        one = ModelGroup(0, settings.resolved_name(), tuple(_split(settings.model_aliases)), settings)
        _check_names("settings", [one])
        return [one]
    where, entries = _entries(settings)
    base = run_dir(settings)
    groups = [_group(settings, base, i, where, e) for i, e in enumerate(entries)]
    _check_names(where, groups)
    return groups


def group_settings(settings: Settings) -> Settings:
    """A group's process (--model-group I): the settings of its group; anything else: the settings as given."""
    if settings.model_group < 0 or not (settings.models or settings.models_file):
        return settings
    groups = model_groups(settings)
    if settings.model_group >= len(groups):
        _fail("settings", f"--model-group {settings.model_group}: only {len(groups)} models are configured")
    return groups[settings.model_group].settings
