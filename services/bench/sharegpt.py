"""A ShareGPT JSON file as `vllm bench serve --dataset-name sharegpt` reads it, so both benches draw the same requests.

The file is a list of {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}, ...]}.
As vLLM does: entries with fewer than two turns are dropped, the rest shuffled with Python's `random` seeded with
`seed`; each entry's turn 0 (the human one) is the prompt and turn 1 (the reply) gives the output length, both
counted in the served model's tokens (`tokenizer.encode`, special tokens added as the server adds them to a text
prompt); a pair with a prompt under 4 tokens, a reply under 4 (unless output_len is given), a prompt over 1024 or
a sum over 2048 is skipped; too few left are filled up by drawing (with replacement, the same seed) from those
kept. Prompts go out as their token ids, so every server sees exactly the same tokens.
"""
from __future__ import annotations

import json
import random

from services.bench.workload import BenchRequest

MIN_LEN, MAX_PROMPT_LEN, MAX_TOTAL_LEN = 4, 1024, 2048  # vLLM's is_valid_sequence defaults


def is_valid_pair(prompt_len: int, output_len: int, output_len_given: bool = False) -> bool:
    return (prompt_len >= MIN_LEN and (output_len_given or output_len >= MIN_LEN)
            and prompt_len <= MAX_PROMPT_LEN and prompt_len + output_len <= MAX_TOTAL_LEN)


def load_conversations(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, list):
        raise ValueError(f"{path}: a ShareGPT file is a JSON list of {{'conversations': [...]}} entries")
    return [e for e in data if isinstance(e, dict) and len(e.get("conversations") or ()) >= 2]


def sharegpt_requests(path: str, num_requests: int, tokenizer, seed: int = 0, output_len: int = 0,
                      oversample: bool = True) -> list[BenchRequest]:
    """num_requests requests from the file (fewer only with oversample False); output_len > 0 replaces every
    reply's length, as vLLM's --sharegpt-output-len does."""
    entries = load_conversations(path)
    random.Random(seed).shuffle(entries)
    requests: list[BenchRequest] = []
    for entry in entries:
        if len(requests) >= num_requests:
            break
        prompt, reply = entry["conversations"][0]["value"], entry["conversations"][1]["value"]
        prompt_ids = list(tokenizer.encode(prompt))
        out = output_len or len(tokenizer.encode(reply))
        if is_valid_pair(len(prompt_ids), out, output_len > 0):
            requests.append(BenchRequest(prompt_ids, out))
    if not requests:
        raise ValueError(f"{path}: no conversation passes the length filters (prompt 4-1024 tokens, reply at "
                         "least 4, both at most 2048)")
    if oversample and len(requests) < num_requests:
        pick = random.Random(seed)
        requests += [pick.choice(requests) for _ in range(num_requests - len(requests))]
    return requests


def load_bench_tokenizer(tokenizer: str, hf_config: str):
    """The served model's tokenizer: `tokenizer` as `ferry serve --model` takes it (a model directory, a .gguf
    file, the default model's name); empty: the dummy tokenizer that `ferry serve --load-format dummy
    --hf-config X` serves (word "tN" is id N, other words hash into the vocabulary)."""
    from engine.tokenizer import load_tokenizer
    from shared.settings import Settings

    if tokenizer:
        return load_tokenizer(Settings(model=tokenizer))
    return load_tokenizer(Settings(load_format="dummy", hf_config=hf_config))
