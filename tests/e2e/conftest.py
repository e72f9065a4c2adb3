import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="session")
def llm():
    """The engine in this process: the reference for greedy text."""
    from engine.llm import LLM
    from shared.settings import Settings

    return LLM(Settings(kv_cache_bytes=64 * 1024 * 1024))


@pytest.fixture(scope="session")
def reference(llm):
    """reference(prompt_ids, max_tokens) -> greedy output ids from the in-process engine (cached)."""
    from shared.sampling_params import SamplingParams

    cache = {}

    def run(prompt_ids, max_tokens):
        key = (tuple(prompt_ids), max_tokens)
        if key not in cache:
            cache[key] = llm.generate([list(prompt_ids)], SamplingParams(temperature=0.0, max_tokens=max_tokens))[0][0]
        return cache[key]

    def batch(prompts, max_tokens):
        key = (tuple(map(tuple, prompts)), max_tokens)
        if key not in cache:
            outs = llm.generate([list(p) for p in prompts], SamplingParams(temperature=0.0, max_tokens=max_tokens))
            cache[key] = [o[0] for o in outs]
        return cache[key]

    run.batch = batch
    return run
