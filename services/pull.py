"""`ferry pull org/name`: fetch a model into the local Hugging Face cache (engine/hub.py), where `ferry serve
--model org/name` then finds it, also offline. Offline (HF_HUB_OFFLINE=1) with the model not cached: a clear
message and exit status 1."""
from __future__ import annotations

import argparse
import sys

from engine.hub import download, find_cached, hf_cache_dir, offline
from shared.errors import ModelNotAvailable
from shared.hub_names import is_hub_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ferry pull", description=__doc__)
    parser.add_argument("model", help="a Hugging Face model repository, org/name")
    args = parser.parse_args(argv)
    if not is_hub_id(args.model):
        print(f"ferry pull: {args.model!r} is not a hub name (org/name) or is a local path already", file=sys.stderr)
        return 2
    cached = find_cached(args.model)
    if cached and offline():  # nothing to check for updates against: what is here is what there is
        print(f"{args.model} is in the local cache (offline, not checked for updates): {cached}")
        return 0
    try:
        path = download(args.model)
    except ModelNotAvailable as e:
        if cached:  # the hub did not answer, but a copy is here already: that is what a pull is for
            print(f"ferry pull: {e.message}\nkept the copy in the local cache: {cached}", file=sys.stderr)
            return 0
        print(f"ferry pull: {e.message}", file=sys.stderr)
        return 1
    print(f"pulled {args.model} into the Hugging Face cache ({hf_cache_dir()}): {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
