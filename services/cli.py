"""The `ferry` command.

    ferry serve [flags]          every process, for development (Ctrl-C stops them all)
    ferry gateway|tokenizer|scheduler|runner|detokenizer [flags]   one process
    ferry bench [--num-requests N] [--request-rate R] [--out FILE] ...   load a running server (--help)
    ferry pull org/name          fetch a model into the local Hugging Face cache
    ferry supervisord-conf [--out FILE] [flags]   supervisord's configuration for these models
    ferry estimate --model X [--max-model-len N --tensor-parallel-size N --gpu-memory GiB ...]   memory plan (--help)
Several models: --model A --model B (repeatable), or --models-file models.toml (name, model, aliases, gpus, limits).
Flags are the settings' names (--model, --served-model-name, --port, --num-tokenizers, ...).
"""
from __future__ import annotations

import importlib
import sys

SERVICES = ("gateway", "tokenizer", "scheduler", "runner", "detokenizer")


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    command, rest = argv[0], argv[1:]
    if command == "serve":
        from services.launcher import serve

        return serve(rest)
    if command == "bench":
        from services.bench.__main__ import main as bench

        return bench(rest)
    if command == "pull":
        from services.pull import main as pull

        return pull(rest)
    if command == "supervisord-conf":
        from services.supervisord_conf import main as supervisord_conf

        return supervisord_conf(rest)
    if command == "estimate":
        from services.estimate import main as estimate

        return estimate(rest)
    if command in SERVICES:
        return importlib.import_module(f"services.{command}.__main__").main(rest)
    print(f"ferry: unknown command {command!r}\n\n{__doc__.strip()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
