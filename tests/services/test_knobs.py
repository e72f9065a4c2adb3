"""The tuning-knob registry (shared/knobs.py): defaults, parsing, and no clash with settings' variables."""
import dataclasses

from shared.knobs import Knobs, knob_env_names, read_knobs
from shared.settings import Settings


def test_defaults_when_unset_or_empty():
    assert read_knobs({}) == Knobs()
    assert read_knobs({"FERRY_PDL": "", "FERRY_DIST_TIMEOUT": ""}) == Knobs()
    k = Knobs()
    assert k.pdl and k.peer_allreduce and k.fused_allreduce_norm and k.peer_allgather
    assert k.peer_allreduce_max_bytes == 2 << 20 and k.dist_timeout_s == 300 and k.cache_dir == ""


def test_read_from_the_environment():
    k = read_knobs({"FERRY_PDL": "0", "FERRY_PEER_ALLREDUCE": "0", "FERRY_FUSED_ALLREDUCE_NORM": "1",
                    "FERRY_PEER_ALLGATHER": "0", "FERRY_PEER_ALLREDUCE_MAX_BYTES": "4096",
                    "FERRY_DIST_TIMEOUT": "12", "FERRY_CACHE_DIR": "/tmp/c", "FERRY_MAX_NUM_SEQS": "3"})
    assert k == Knobs(pdl=False, peer_allreduce=False, fused_allreduce_norm=True, peer_allgather=False,
                      peer_allreduce_max_bytes=4096, dist_timeout_s=12, cache_dir="/tmp/c")
    assert k.cache_root() == "/tmp/c" and Knobs().cache_root().endswith(".cache/ferry")
    assert read_knobs({"FERRY_PDL": "yes"}).pdl  # as before: anything but 0 leaves a switch on


def test_every_knob_documented_and_apart_from_settings():
    names = knob_env_names()
    assert len(set(names.values())) == len(names)
    setting_vars = {"FERRY_" + f.name.upper() for f in dataclasses.fields(Settings)} | {"FERRY_CONFIG"}
    assert not set(names.values()) & setting_vars
    for f in dataclasses.fields(Knobs):
        assert f.metadata["why"] and f.metadata["env"].startswith("FERRY_")


def test_no_knob_read_elsewhere():
    """FERRY_* variables are read by shared/knobs.py and shared/settings.py only."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2]
    read = re.compile(r"""(environ\.get|environ\[|getenv)\(?\s*["']FERRY_""")
    offenders = [str(p.relative_to(root)) for d in ("engine", "kernels", "services", "shared")
                 for p in (root / d).rglob("*.py")
                 if p.name not in ("knobs.py", "settings.py") and read.search(p.read_text())]
    assert offenders == []
