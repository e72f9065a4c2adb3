"""engine/memory_plan.py against the real thing: parameter counts of our models, and `ferry estimate` against the
KV blocks a real ModelRunner allocates for the default model on the CPU (issue 19, must-hold 4)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine.memory_plan import kv_pool_blocks, parameter_count, plan_rank
from engine.model_config import ModelConfig
from fixtures.models import TINY_CONFIGS
from shared.settings import Settings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_parameter_count_and_buffers_match_the_model(name):
    from engine.models import MODELS

    cfg = ModelConfig.from_hf_dict(TINY_CONFIGS[name]().to_dict(), max_model_len=200)
    model = MODELS[cfg.architecture](cfg)
    assert parameter_count(cfg) == sum(p.numel() for p in model.parameters())
    plan = plan_rank(cfg, Settings(dtype="float32"), "cpu")
    assert plan.buffers == sum(b.numel() * b.element_size() for b in model.buffers())
    assert plan.weights == 4 * parameter_count(cfg)


def test_gpu_pool_rule_is_free_less_reserve():
    s = Settings(gpu_memory_utilization=0.9)
    total, free = 100 * 2**30, 80 * 2**30
    reserve = total * 0.1 + 512 * 2**20
    assert kv_pool_blocks(s, 2**20, "cuda", free, total) == int((free - reserve) // 2**20)
    assert kv_pool_blocks(Settings(num_kv_blocks=7), 2**20, "cuda", free, total) == 7
    assert kv_pool_blocks(Settings(kv_cache_bytes=10 * 2**20), 2**20, "cpu") == 10


def _estimate(*args: str) -> tuple[int, dict | str]:
    """`ferry estimate ARGS` in a subprocess: (exit status, the JSON plan with --json, else the text; stderr on
    a bad argument)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "services.cli", "estimate", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    if proc.returncode == 2:
        return 2, proc.stderr
    return proc.returncode, json.loads(proc.stdout) if "--json" in args else proc.stdout


@pytest.fixture
def estimate(capsys):
    """The same command's entry point in this process (no torch import per call)."""
    from services.cli import main

    def run(*args: str):
        rc = main(["estimate", *args])
        out, err = capsys.readouterr()
        return rc, err if rc == 2 else json.loads(out) if "--json" in args else out
    return run


def test_estimate_agrees_with_the_runner_for_the_default_model():
    from engine.model_runner import ModelRunner

    flags = ["--device", "cpu", "--kv-cache-bytes", str(96 * 2**20), "--max-model-len", "2048"]
    rc, est = _estimate(*flags, "--json")
    assert rc == 0, est
    [plan] = est["ranks"]
    runner = ModelRunner(Settings(device="cpu", kv_cache_bytes=96 * 2**20, max_model_len=2048, load_format="dummy"),
                         show_progress=False)
    real_weights = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    print(f"estimate {plan['kv_blocks']} KV blocks, runner {runner.num_kv_blocks}; weights {plan['weights']} vs "
          f"{real_weights} bytes")
    assert abs(plan["kv_blocks"] - runner.num_kv_blocks) <= 0.05 * runner.num_kv_blocks
    assert abs(plan["weights"] - real_weights) <= 0.05 * real_weights
    assert plan["kv_bytes_per_block"] * plan["kv_blocks"] <= 96 * 2**20
    assert runner.model_config.max_model_len == est["max_model_len"] == 2048


def test_estimate_prints_a_plan_and_says_whether_it_fits(estimate):
    rc, text = estimate("--load-format", "dummy", "--hf-config", "llama-3.1-8b", "--max-model-len", "4096",
                         "--gpu-memory", "139.8", "--max-num-seqs", "256")
    assert rc == 0, text
    for row in ("weights per GPU", "KV cache per token", "KV pool", "activation peak", "CUDA graph pool"):
        assert row in text
    assert "128.0 KiB" in text  # 2 x 32 layers x 8 KV heads x 128 x bf16
    assert "fits" in text
    rc, text = estimate("--load-format", "dummy", "--hf-config", "llama-3-70b", "--gpu-memory", "80")
    assert rc == 1 and "does not fit" in text, text
    rc, text = estimate("--load-format", "dummy", "--hf-config", "llama-3-70b", "--gpu-memory", "80",
                         "--tensor-parallel-size", "4")
    assert rc == 0 and "fits" in text, text


def test_estimate_rejects_unknown_quantization_and_missing_models(estimate, tmp_path):
    rc, err = estimate("--quantization", "int8")
    assert rc == 2 and "quantization 'int8' is not supported" in err
    rc, err = estimate("--quantization", "awq", "--gpu-memory", "80")  # the default model is a GGUF file
    assert rc == 2 and "needs a awq safetensors checkpoint" in err
    rc, err = estimate("--model", str(tmp_path / "nowhere"), "--gpu-memory", "80")
    assert rc == 2 and "does not exist" in err


def test_estimate_reads_only_config_json(estimate, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIGS["qwen3"]().to_dict()))
    rc, est = estimate("--model", str(tmp_path), "--gpu-memory", "4", "--json")
    assert rc == 0, est
    assert est["ranks"][0]["parameters"] == parameter_count(ModelConfig.from_hf_dict(TINY_CONFIGS["qwen3"]().to_dict()))
