"""Several models in one server (shared/model_groups.py): where the list comes from, what each group runs with,
and the gateway's one resolver of names and aliases (services/gateway/model_router.py)."""
from __future__ import annotations

import json
import os

import pytest

from services.gateway.metrics import Metrics
from services.gateway.model_router import ModelRouter
from shared.errors import ModelNotFound
from shared.model_groups import group_run_dir, group_settings, model_groups
from shared.settings import DEFAULT_MODEL, load_settings

TOML = """
[[models]]
name = "smol"
model = "SmolLM2-135M-Instruct"
aliases = ["default", "small"]
max_num_seqs = 8

[[models]]
path = "/models/tiny"
tensor-parallel-size = 2
gpus = [2, 3]
kv_cache_bytes = 1048576
"""


@pytest.fixture
def models_file(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(TOML)
    return str(path)


def test_one_model_is_the_settings_themselves():
    s = load_settings(["--port", "8123"])
    [g] = model_groups(s)
    assert g.settings is s and g.name == DEFAULT_MODEL and g.index == 0 and g.aliases == ()
    assert group_settings(s) is s  # the single-model path: nothing derived, nothing renamed


def test_aliases_of_the_single_model():
    [g] = model_groups(load_settings(["--model-aliases", "a, b"]))
    assert g.names == (DEFAULT_MODEL, "a", "b")


def test_repeated_model_flag_makes_groups(tmp_path):
    s = load_settings(["--model", DEFAULT_MODEL, "--model", "org/tiny", "--run-dir", str(tmp_path)])
    assert s.model == DEFAULT_MODEL and s.models == f"{DEFAULT_MODEL},org/tiny"
    groups = model_groups(s)
    assert [g.name for g in groups] == [DEFAULT_MODEL, "org/tiny"]  # a hub name is served under itself
    assert [g.settings.run_dir for g in groups] == [str(tmp_path / "m0"), str(tmp_path / "m1")]
    assert all(g.settings.models == "" and g.settings.model_group == g.index for g in groups)


def test_models_file_toml(models_file, tmp_path):
    s = load_settings(["--models-file", models_file, "--run-dir", str(tmp_path), "--max-num-seqs", "64"])
    smol, tiny = model_groups(s)
    assert (smol.name, smol.aliases, smol.settings.max_num_seqs) == ("smol", ("default", "small"), 8)
    assert (tiny.name, tiny.settings.model, tiny.settings.max_num_seqs) == ("tiny", "/models/tiny", 64)
    assert (tiny.settings.tensor_parallel_size, tiny.gpus, tiny.settings.kv_cache_bytes) == (2, "2,3", 1048576)
    # What a group's own process (--model-group 1) runs with, derived the same way everywhere.
    mine = group_settings(load_settings(["--models-file", models_file, "--run-dir", str(tmp_path),
                                         "--max-num-seqs", "64", "--model-group", "1"]))
    assert mine == tiny.settings


def test_models_file_json(tmp_path):
    path = tmp_path / "models.json"
    path.write_text(json.dumps([{"model": "/a/one"}, {"model": "/b/two", "name": "second", "aliases": "2nd"}]))
    groups = model_groups(load_settings(["--models-file", str(path)]))
    assert [g.names for g in groups] == [("one",), ("second", "2nd")]


@pytest.mark.parametrize("entries, message", [
    ([{"model": "/a/x"}, {"model": "/b/x"}], "is given to"),  # two models called x
    ([{"model": "/a/x", "aliases": ["y"]}, {"model": "/b/y"}], "is given to"),
    ([{"model": "/a/x", "port": 9}], "unknown keys ['port']"),  # a server setting, not a model's
    ([{"name": "x"}], "needs one of model or path"),
    ([{"model": "/a/x", "max_num_seqs": "8"}], "max_num_seqs must be a int"),
    ([{"model": "/a/x", "gpus": [0, 1]}], "2 gpus for tensor_parallel_size 1"),
    ([{"model": "/a/x", "name": "has space"}], "model name 'has space'"),
    ([], "non-empty list"),
])
def test_bad_models_files_say_what_is_wrong(tmp_path, entries, message):
    path = tmp_path / "models.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(SystemExit) as e:
        model_groups(load_settings(["--models-file", str(path)]))
    assert message in str(e.value)


def test_names_need_a_models_file(models_file):
    with pytest.raises(SystemExit, match="name them"):
        model_groups(load_settings(["--model", "/a/x", "--model", "/b/y", "--served-model-name", "z"]))
    with pytest.raises(SystemExit, match="name them"):
        model_groups(load_settings(["--models-file", models_file, "--model-aliases", "z"]))
    with pytest.raises(SystemExit, match="not both"):  # a --model beside the file would go unserved
        model_groups(load_settings(["--models-file", models_file, "--model", "/a/x"]))


def test_tcp_groups_get_port_ranges_of_their_own():
    assert group_run_dir("tcp://127.0.0.1:7000", 0) == "tcp://127.0.0.1:7000"
    assert group_run_dir("tcp://127.0.0.1:7000", 2) == "tcp://127.0.0.1:11000"


def test_router_resolves_names_and_aliases(models_file, tmp_path):
    s = load_settings(["--models-file", models_file, "--run-dir", str(tmp_path / "run")])
    os.makedirs(tmp_path / "run", mode=0o700)
    router = ModelRouter(s, Metrics(0))
    try:
        assert [x.name for x in router.served] == ["smol", "tiny"]
        body = {"model": "small"}
        assert router.route(body).name == "smol" and body["model"] == "smol"  # parsed and answered as smol
        assert router.route({"model": "tiny"}).name == "tiny"
        assert router.route({}) is router.default and router.route([1]) is router.default
        with pytest.raises(ModelNotFound):
            router.route({"model": "gpt-4"})
        # Each group's client has its own sockets, in its own run directory.
        assert router.served[1].client.replies.addr == f"ipc://{tmp_path}/run/m1/gateway.0"
        assert set(router.down()) == {"smol", "tiny"}  # no scheduler has spoken yet
    finally:
        for c in router.clients:
            c.ctx.destroy(0)
