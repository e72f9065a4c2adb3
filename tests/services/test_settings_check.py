"""Settings are range-checked at start-up (shared/settings_check.py): every bad value stops load_settings with one
line naming the flag, the value and what is allowed; every value in use today still loads."""
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.model_groups import group_settings, model_groups
from shared.settings import Settings, load_settings
from shared.settings_check import CHECKED_BY_OWNER, CHOICES, FREE_TEXT, RANGES, problems

ROOT = str(Path(__file__).resolve().parents[2])


def refused(argv, **env) -> str:
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        with pytest.raises(SystemExit) as stop:
            load_settings(argv)
    return str(stop.value.code)


def test_the_defaults_load_and_pass():
    assert problems(Settings()) == []
    assert problems(load_settings([])) == []


def test_every_setting_says_what_it_allows():
    kinds = {f.name: f.type for f in dataclasses.fields(Settings)}
    numeric = {n for n, k in kinds.items() if k in ("int", "float")}
    strings = {n for n, k in kinds.items() if k == "str"}
    assert set(RANGES) == numeric  # a new numeric setting must give its range (and no entry outlives its setting)
    homes = [set(CHOICES), set(CHECKED_BY_OWNER), set(FREE_TEXT)]
    assert set().union(*homes) == strings and sum(map(len, homes)) == len(strings)  # each string setting once


BAD = [
    (["--max-num-seqs", "0"], "--max-num-seqs 0", ">= 1"),
    (["--block-size", "7"], "--block-size 7", "power of two"),
    (["--block-size", "128"], "--block-size 128", "power of two from 1 to 64"),
    (["--block-size", "0"], "--block-size 0", "power of two"),
    (["--gpu-memory-utilization", "1.7"], "--gpu-memory-utilization 1.7", "above 0 up to 1"),
    (["--gpu-memory-utilization", "0"], "--gpu-memory-utilization 0.0", "above 0 up to 1"),
    (["--port", "70000"], "--port 70000", "from 1 to 65535"),
    (["--port", "0"], "--port 0", "from 1 to 65535"),
    (["--tensor-parallel-size", "0"], "--tensor-parallel-size 0", ">= 1"),
    (["--max-num-batched-tokens", "-1"], "--max-num-batched-tokens -1", ">= 1"),
    (["--max-model-len", "-5"], "--max-model-len -5", ">= 0"),
    (["--num-kv-blocks", "-1"], "--num-kv-blocks -1", ">= 0"),
    (["--kv-cache-bytes", "-1"], "--kv-cache-bytes -1", ">= 0"),
    (["--num-tokenizers", "0"], "--num-tokenizers 0", ">= 1"),
    (["--dtype", "float64"], "--dtype 'float64'", "auto, float32, bfloat16, float16"),
    (["--load-format", "foo"], "--load-format 'foo'", "auto, safetensors, gguf, dummy"),
    (["--device", "tpu"], "--device 'tpu'", "auto, cpu, cuda"),
    (["--log-format", "yaml"], "--log-format 'yaml'", "text, json"),
    (["--log-level", "loud"], "--log-level 'loud'", "DEBUG"),
    (["--request-timeout", "-1"], "--request-timeout -1.0", ">= 0"),
    (["--shutdown-timeout", "-0.5"], "--shutdown-timeout -0.5", ">= 0"),
    (["--http-read-timeout", "0"], "--http-read-timeout 0.0", "> 0"),
    (["--gateway-timeout", "-1"], "--gateway-timeout -1.0", "> 0"),
    (["--heartbeat-interval", "0"], "--heartbeat-interval 0.0", "> 0"),
    (["--peer-timeout", "nan"], "--peer-timeout nan", "> 0"),
    (["--request-timeout", "inf"], "--request-timeout inf", ">= 0"),
    (["--max-waiting-requests", "-3"], "--max-waiting-requests -3", ">= 0"),
    (["--rate-limit-rpm", "-1"], "--rate-limit-rpm -1", ">= 0"),
    (["--max-n", "0"], "--max-n 0", ">= 1"),
    (["--max-json-depth", "0"], "--max-json-depth 0", ">= 1"),
    (["--max-body-bytes", "0"], "--max-body-bytes 0", ">= 1"),
    (["--max-frame-bytes", "-1"], "--max-frame-bytes -1", ">= 1"),
    (["--max-connections", "0"], "--max-connections 0", ">= 1"),
    (["--cuda-graph-max-tokens", "-1"], "--cuda-graph-max-tokens -1", ">= 0"),
    (["--max-prefill-tokens", "-1"], "--max-prefill-tokens -1", ">= 0"),
    (["--model-group", "-2"], "--model-group -2", ">= -1"),
    (["--seed", str(2**63)], f"--seed {2**63}", "from"),
    (["--rank", "1"], "--rank 1", "below --tensor-parallel-size 1"),
    (["--tensor-parallel-size", "2", "--rank", "2"], "--rank 2", "below --tensor-parallel-size 2"),
    (["--heartbeat-interval", "1", "--peer-timeout", "1"], "--peer-timeout 1.0", "above --heartbeat-interval 1.0"),
]


@pytest.mark.parametrize("argv, named, allowed", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_a_bad_value_stops_start_up_naming_the_flag(argv, named, allowed):
    message = refused(argv)
    assert message.startswith(f"invalid setting {named}:") and allowed in message
    assert "\n" not in message  # one line


def test_every_bad_value_is_listed_at_once():
    assert refused(["--max-num-seqs", "0", "--port", "0"]).splitlines() == [
        "invalid setting --max-num-seqs 0: must be >= 1", "invalid setting --port 0: must be from 1 to 65535"]


GOOD = [
    [], ["--max-model-len", "0"], ["--kv-cache-bytes", "0"], ["--num-kv-blocks", "0"], ["--max-prefill-tokens", "0"],
    ["--max-waiting-requests", "0"], ["--request-timeout", "0.0"], ["--shutdown-timeout", "0"],
    ["--cuda-graph-max-tokens", "0"], ["--rate-limit-rpm", "0", "--rate-limit-tpm", "0"],
    ["--block-size", "1"], ["--block-size", "4"], ["--block-size", "32"], ["--block-size", "64"],
    ["--gpu-memory-utilization", "1.0"], ["--gpu-memory-utilization", "0.05"], ["--port", "1"], ["--port", "65535"],
    ["--max-num-seqs", "1"], ["--max-num-batched-tokens", "1"],  # a token budget under block_size still runs
    ["--max-num-seqs", "1024", "--max-model-len", "4096", "--max-prefill-tokens", "1024"],  # benchmarks/*.sh
    ["--tensor-parallel-size", "2", "--rank", "1"], ["--heartbeat-interval", "0.1", "--peer-timeout", "0.5"],
    ["--seed", "-1"], ["--model-group", "-1"], ["--log-level", "debug"], ["--log-level", "WARNING"],
    ["--log-format", "json"], ["--load-format", "dummy", "--hf-config", "llama-3.1-8b"], ["--dtype", "bfloat16"],
    ["--dtype", "float16"], ["--device", "cpu"], ["--max-stop-strings", "0"], ["--max-grammar-chars", "0"],
    ["--kv-cache-dtype", "fp8"], ["--quantization", "awq"], ["--tool-call-parser", "hermes"],
]


@pytest.mark.parametrize("argv", GOOD, ids=[" ".join(g) or "defaults" for g in GOOD])
def test_values_in_use_still_load(argv):
    load_settings(argv)


def test_the_environment_and_a_toml_file_are_checked_and_typed_strictly(tmp_path):
    assert refused([], FERRY_MAX_NUM_SEQS="0") == "invalid setting --max-num-seqs 0: must be >= 1"
    assert refused([], FERRY_MAX_NUM_SEQS="many") == "invalid setting --max-num-seqs 'many': not a whole number"
    assert refused([], FERRY_ENFORCE_EAGER="ture").startswith("invalid setting --enforce-eager 'ture': not a boolean")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERRY_ENFORCE_EAGER", "off")
        mp.setenv("FERRY_DOWNLOAD", " Yes ")
        s = load_settings([])
    assert s.enforce_eager is False and s.download is True
    toml = tmp_path / "ferry.toml"
    toml.write_text("max_num_seqs = 64.0\nenforce_eager = 1\ngpu_memory_utilization = 1\napi_key = 12345\n")
    s = load_settings(["--config", str(toml)])
    assert (s.max_num_seqs, s.enforce_eager, s.gpu_memory_utilization, s.api_key) == (64, True, 1.0, "12345")
    for line, message in [("max_num_seqs = 2.5", "--max-num-seqs 2.5: not a whole number"),
                          ("port = true", "--port True: not a whole number"),
                          ("dtype = [\"float16\"]", "--dtype ['float16']: not a string"),
                          ("block_size = 24", "--block-size 24: must be a power of two from 1 to 64")]:
        toml.write_text(line + "\n")
        assert refused(["--config", str(toml)]) == f"invalid setting {message}"


def models_file(tmp_path, extra: str) -> str:
    path = tmp_path / "models.toml"
    path.write_text(f'[[models]]\nmodel = "/m/a"\n{extra}\n[[models]]\nmodel = "/m/b"\n')
    return str(path)


def test_a_models_file_entry_is_checked_too(tmp_path):
    with pytest.raises(SystemExit) as stop:
        model_groups(load_settings(["--models-file", models_file(tmp_path, "max_num_seqs = 0")]))
    assert "/m/a: invalid setting --max-num-seqs 0: must be >= 1" in str(stop.value.code)


def test_a_rank_is_checked_against_its_own_groups_size(tmp_path):
    path = models_file(tmp_path, "tensor_parallel_size = 2")
    argv = ["--models-file", path, "--run-dir", str(tmp_path / "run"), "--rank", "1"]
    assert group_settings(load_settings([*argv, "--model-group", "0"])).tensor_parallel_size == 2
    with pytest.raises(SystemExit) as stop:  # the second model has one rank
        group_settings(load_settings([*argv, "--model-group", "1"]))
    assert "/m/b: invalid setting --rank 1: must be below --tensor-parallel-size 1" in str(stop.value.code)


def test_choices_match_the_lists_their_users_hold():
    from engine.model_runner import DTYPES
    from shared.logs import LOG_FORMATS

    assert set(CHOICES["dtype"]) == {"auto", *DTYPES}
    assert CHOICES["log_format"] == LOG_FORMATS


def test_settings_left_to_their_owners_are_refused_there():
    from engine.memory_plan import kv_cache_dtype
    from engine.quant.detect import read_scheme
    from engine.quant.scheme import UnsupportedQuantization
    from services.gateway.tool_calls import resolve_parser

    s = load_settings(["--kv-cache-dtype", "int3", "--quantization", "int3", "--tool-call-parser", "int3"])
    with pytest.raises(ValueError, match="kv_cache_dtype 'int3'"):
        kv_cache_dtype(s)
    with pytest.raises(UnsupportedQuantization, match="--quantization 'int3'"):
        read_scheme({}, s.quantization)
    with pytest.raises(ValueError, match="--tool-call-parser"):
        resolve_parser(s.tool_call_parser, None)


def test_ferry_serve_with_a_bad_value_exits_at_once_naming_it(tmp_path):
    run_dir = tmp_path / "run"
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "services.cli", "serve", "--max-num-seqs", "0",
                           "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode != 0
    assert "invalid setting --max-num-seqs 0: must be >= 1" in done.stderr
    assert "started" not in done.stderr and not run_dir.exists()  # no child, not even the run directory
    assert time.monotonic() - start < 30
