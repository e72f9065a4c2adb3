"""Models by hub name: `org/name` found in the local Hugging Face cache (its real layout:
`models--org--name/refs/main` names the snapshot, `snapshots/<hash>/` holds links into `blobs/`) or in the
ModelScope cache, else downloaded through huggingface_hub when this machine may (not with HF_HUB_OFFLINE=1, not
with --no-download). Nothing here imports huggingface_hub unless a download is needed."""
from __future__ import annotations

import glob
import os

from shared.errors import ModelNotAvailable
from shared.hub_names import cache_folder_name

# What a download fetches: weights as safetensors, configs, tokenizer files; not .bin/.onnx/.gguf duplicates.
PULL_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "*.jinja"]


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def offline() -> bool:
    return _truthy("HF_HUB_OFFLINE")


def hf_cache_dir() -> str:
    """Where huggingface_hub keeps models: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return os.path.expanduser(explicit)
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def modelscope_cache_dir() -> str:
    return os.path.expanduser(os.environ.get("MODELSCOPE_CACHE") or "~/.cache/modelscope/hub")


def _usable(folder: str) -> str | None:
    """The model in a snapshot folder: the folder (config.json, safetensors) or its one .gguf file."""
    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    ggufs = sorted(glob.glob(os.path.join(folder, "*.gguf")))
    return ggufs[0] if len(ggufs) == 1 else None


def find_in_hf_cache(repo_id: str, cache: str | None = None) -> str | None:
    """The snapshot refs/main names (or the only snapshot there is), if it holds a model."""
    repo = os.path.join(cache or hf_cache_dir(), cache_folder_name(repo_id))
    try:
        with open(os.path.join(repo, "refs", "main")) as fh:
            snapshots = [fh.read().strip()]
    except OSError:
        snapshots = os.listdir(os.path.join(repo, "snapshots")) if os.path.isdir(os.path.join(repo, "snapshots")) \
            else []
        if len(snapshots) != 1:
            return None
    if not snapshots[0] or "/" in snapshots[0] or snapshots[0].startswith("."):
        return None
    folder = os.path.join(repo, "snapshots", snapshots[0])
    return _usable(folder) if os.path.isdir(folder) else None


def find_in_modelscope_cache(repo_id: str, cache: str | None = None) -> str | None:
    """ModelScope keeps models at <cache>/models/org/name (older: <cache>/org/name), '.' written as '___'."""
    base = cache or modelscope_cache_dir()
    org, name = repo_id.split("/", 1)
    for n in dict.fromkeys((name, name.replace(".", "___"))):
        for folder in (os.path.join(base, "models", org, n), os.path.join(base, org, n)):
            if os.path.isdir(folder) and _usable(folder):
                return _usable(folder)
    return None


def find_cached(repo_id: str) -> str | None:
    return find_in_hf_cache(repo_id) or find_in_modelscope_cache(repo_id)


def why_no_download(allow: bool = True) -> str | None:
    """Why this process may not download now, or None when it may."""
    if offline():
        return "HF_HUB_OFFLINE is set"
    if not allow:
        return "downloads are off (--no-download)"
    return None


def download(repo_id: str) -> str:
    """Fetch the model into the Hugging Face cache (huggingface_hub, which locks against concurrent pulls)."""
    reason = why_no_download()
    if reason:
        raise ModelNotAvailable(f"cannot download {repo_id}: this machine is offline ({reason}); "
                                f"run `ferry pull {repo_id}` where the hub is reachable and copy the cache, "
                                "or give a local directory or .gguf file")
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, allow_patterns=PULL_PATTERNS)
    except ImportError:
        raise ModelNotAvailable("downloading needs huggingface_hub: pip install huggingface_hub") from None
    except Exception as e:  # no network, no such repository, gated, disk full: say so, whatever it was
        raise ModelNotAvailable(f"could not download {repo_id} from the Hugging Face hub: "
                                f"{type(e).__name__}: {e}") from None
    found = _usable(folder)
    if found is None:
        raise ModelNotAvailable(f"{repo_id} was downloaded to {folder} but holds no config.json (safetensors) "
                                "or single .gguf file ferry can load")
    return found


def resolve_hub_model(repo_id: str, allow_download: bool = True) -> str:
    """A local path for org/name: from a cache, or downloaded; raises ModelNotAvailable with what to do."""
    found = find_cached(repo_id)
    if found:
        return found
    reason = why_no_download(allow_download)
    if reason:
        raise ModelNotAvailable(
            f"model {repo_id!r} is not a local path and is not in the Hugging Face cache ({hf_cache_dir()}) or "
            f"the ModelScope cache ({modelscope_cache_dir()}), and it cannot be downloaded: {reason}. Run "
            f"`ferry pull {repo_id}` on a machine with network access (and copy the cache here), or give a local "
            "directory or .gguf file")
    return download(repo_id)
