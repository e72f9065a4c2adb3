"""Shared fixtures: the default model loaded once per session in ferry's runner (in transformers: tests/conftest.py)."""
import pytest
import torch

from fixtures.prompts import CHAT_PROMPTS
from shared.settings import Settings


@pytest.fixture(scope="session")
def default_runner():
    from engine.model_runner import ModelRunner

    torch.manual_seed(0)
    return ModelRunner(Settings(), show_progress=False)


@pytest.fixture(scope="session")
def tokenizer():
    from engine.tokenizer import load_tokenizer

    return load_tokenizer(Settings())


@pytest.fixture(scope="session")
def chat_prompts(tokenizer):
    from engine.tokenizer import chat_token_ids

    return [chat_token_ids(tokenizer, [{"role": "user", "content": text}]) for text in CHAT_PROMPTS]


def make_llm(runner, **overrides):
    from engine.llm import LLM

    return LLM(Settings(**overrides), runner=runner)
