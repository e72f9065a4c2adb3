"""Models by name (engine/hub.py): the Hugging Face cache in its real layout, the ModelScope cache, and what
happens offline; `ferry pull` offline; the generated supervisord configuration, read by supervisord itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from supervisor.options import ServerOptions

from engine.hub import find_in_hf_cache, find_in_modelscope_cache, resolve_hub_model
from engine.model_config import resolve_model_path
from fixtures.hub_cache import make_hf_cache
from services.gateway.pull_route import parse_pull
from services.supervisord_conf import render
from shared.errors import InvalidParameter, ModelNotAvailable
from shared.settings import Settings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (d / "model.safetensors").write_bytes(b"weights")
    return str(d)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))


def test_hf_cache_real_layout(offline, tmp_path, model_dir):
    snapshot = make_hf_cache(str(tmp_path / "hf"), "org/tiny", model_dir)
    assert os.path.islink(os.path.join(snapshot, "config.json"))  # links into blobs/, as huggingface_hub makes
    assert find_in_hf_cache("org/tiny") == snapshot
    assert resolve_model_path("org/tiny") == snapshot
    assert Settings(model="org/tiny").resolved_name() == "org/tiny"
    with open(os.path.join(snapshot, "model.safetensors"), "rb") as fh:
        assert fh.read() == b"weights"


def test_modelscope_cache(offline, tmp_path, model_dir):
    target = tmp_path / "ms" / "models" / "Qwen" / "Qwen2___5-0___5B"  # ModelScope writes '.' as '___'
    target.parent.mkdir(parents=True)
    os.symlink(model_dir, target)
    assert find_in_modelscope_cache("Qwen/Qwen2.5-0.5B") == str(target)
    assert resolve_hub_model("Qwen/Qwen2.5-0.5B") == str(target)


def test_offline_and_not_cached_says_what_to_do(offline):
    with pytest.raises(ModelNotAvailable) as e:
        resolve_model_path("org/absent")
    assert "HF_HUB_OFFLINE" in e.value.message and "ferry pull org/absent" in e.value.message


def test_no_download_setting(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    with pytest.raises(ModelNotAvailable, match="--no-download"):
        resolve_model_path("org/absent", allow_download=False)


def test_ferry_pull_offline_fails_clearly(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hf"), PYTHONPATH=REPO)
    p = subprocess.run([sys.executable, "-m", "services.cli", "pull", "org/absent"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p
    assert "offline" in p.stderr and "HF_HUB_OFFLINE" in p.stderr, p.stderr


def test_ferry_pull_finds_a_cached_model_offline(tmp_path, model_dir):
    snapshot = make_hf_cache(str(tmp_path / "hf"), "org/tiny", model_dir)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hf"), PYTHONPATH=REPO)
    p = subprocess.run([sys.executable, "-m", "services.cli", "pull", "org/tiny"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and snapshot in p.stdout, p


@pytest.mark.parametrize("body, param", [
    ({"model": 3}, "model"), ({"model": "a/b", "insecure": True}, "insecure"),
    ({"model": "a/b", "stream": "yes"}, "stream"), ({"model": "a/b", "x": 1}, "x"),
])
def test_pull_body_checks(body, param):
    with pytest.raises(InvalidParameter) as e:
        parse_pull(body)
    assert e.value.param == param


def test_pull_body():
    assert parse_pull({"name": "org/x"}) == ("org/x", True)
    assert parse_pull({"model": "org/x", "stream": False}) == ("org/x", False)


def test_supervisord_conf_for_two_models_is_read_by_supervisord(tmp_path):
    models = tmp_path / "models.json"
    models.write_text(json.dumps([{"model": "SmolLM2-135M-Instruct", "name": "smol"},
                                  {"model": "/m/tiny", "tensor_parallel_size": 2, "gpus": [1, 2],
                                   "num_tokenizers": 3}]))
    conf = tmp_path / "ferry.conf"
    conf.write_text(render(["--models-file", str(models), "--port", "8111"], REPO, "python", environ={}))
    options = ServerOptions()
    options.realize(args=["-c", str(conf)])
    programs = {p.name: p for g in options.process_group_configs for p in g.process_configs}
    assert set(programs) == {"g0-runner-0", "g0-scheduler", "g0-detokenizer", "g0-tokenizer-0",
                             "g1-runner-0", "g1-runner-1", "g1-scheduler", "g1-detokenizer",
                             "g1-tokenizer-0", "g1-tokenizer-1", "g1-tokenizer-2", "gateway"}
    assert programs["g1-runner-1"].command.endswith("--model-group 1 --rank 1")
    assert programs["g1-tokenizer-2"].command.endswith("--model-group 1 --tokenizer-id 2")
    assert programs["g1-runner-0"].environment == {"CUDA_VISIBLE_DEVICES": "1,2", "MASTER_ADDR": "127.0.0.1",
                                                   "MASTER_PORT": "29501"}
    assert "--model-group" not in programs["gateway"].command
    assert programs["gateway"].priority > programs["g0-runner-0"].priority  # stops first, drains
