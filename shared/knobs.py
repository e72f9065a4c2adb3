"""Every tuning knob read from the environment, in one place: its default, its variable and why it exists.

Knobs are switches for experiments and odd machines (turn a fast path off, widen a timeout), not settings:
settings (shared/settings.py) say what to serve and how big, and every service takes them from flags, a
TOML file or FERRY_<SETTING> variables. A knob's variable is a FERRY_* name no setting uses. read_knobs()
reads them once, at a process's start; the Knobs value is then passed to what needs it (the model runner,
the tensor-parallel group, the kernels' PDL switch), so nothing reads the environment deep in the code.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields


def _knob(default, env: str, why: str):
    return field(default=default, metadata={"env": env, "why": why})


@dataclass(frozen=True)
class Knobs:
    pdl: bool = _knob(True, "FERRY_PDL", "Hopper kernels start while the one before ends (kernels/pdl.py); 0: off")
    peer_allreduce: bool = _knob(True, "FERRY_PEER_ALLREDUCE",
                                 "TP collectives over NVLink peer memory instead of NCCL; 0: all three off")
    peer_allreduce_max_bytes: int = _knob(2 << 20, "FERRY_PEER_ALLREDUCE_MAX_BYTES",
                                          "the most bytes per rank a peer-memory collective takes")
    fused_allreduce_norm: bool = _knob(True, "FERRY_FUSED_ALLREDUCE_NORM",
                                       "all-reduce + residual add + RMSNorm in one kernel; 0: off")
    peer_allgather: bool = _knob(True, "FERRY_PEER_ALLGATHER", "the LM head's all-gather over peer memory; 0: off")
    skinny_gemm_max_m: int = _knob(32, "FERRY_SKINNY_GEMM_MAX_M",
                                   "projections of 2 to this many rows (at most 32) on a GPU use "
                                   "kernels/skinny_gemm.py "
                                   "instead of cuBLAS; 0: off")
    fp8_skinny_max_m: int = _knob(32, "FERRY_FP8_SKINNY_MAX_M",
                                  "FP8 projections of up to this many rows (at most 32) on a GPU run W8A8 through "
                                  "kernels/skinny_gemm.py; 0: off (the W8A16 GEMV at one row, the FP8 GEMMs above)")
    grammar_compile_threads: int = _knob(0, "FERRY_GRAMMAR_COMPILE_THREADS",
                                         "threads a runner compiles new grammars on, so one large schema does not "
                                         "hold the others' compiles; 0: 1 on the CPU (the forward needs the "
                                         "cores), 4 on a GPU")
    dist_timeout_s: int = _knob(300, "FERRY_DIST_TIMEOUT",
                                "seconds a rank waits to join its group (ranks load checkpoints at their own pace)")
    cache_dir: str = _knob("", "FERRY_CACHE_DIR", "where parsed GGUF configs and tokenizers are cached; "
                                                  "empty: ~/.cache/ferry")
    gguf_weight_cache: bool = _knob(False, "FERRY_GGUF_WEIGHT_CACHE",
                                    "keep a GGUF's dequantized weights (float32 safetensors, 4 bytes a parameter) "
                                    "under cache_dir, so later loads skip dequantizing; for small models and tests")

    def cache_root(self) -> str:
        return self.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "ferry")


def knob_env_names() -> dict[str, str]:
    """Knob name -> its environment variable."""
    return {f.name: f.metadata["env"] for f in fields(Knobs)}


def _parse(kind: str, raw: str):
    if kind == "bool":
        return raw.strip() != "0"  # as before: anything but 0 leaves a switch on
    return int(raw) if kind == "int" else raw


def read_knobs(environ: Mapping[str, str] = os.environ) -> Knobs:
    """The knobs set in `environ`, defaults for the rest (an empty variable counts as unset)."""
    values = {}
    for f in fields(Knobs):
        raw = environ.get(f.metadata["env"])
        if raw:
            values[f.name] = _parse(str(f.type), raw)
    return Knobs(**values)
