"""Shared fixtures: the default model loaded once per session, in ferry's runner and in transformers."""
import os

import pytest
import torch

from shared.settings import Settings

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three uses of a paperclip.",
    "Explain photosynthesis in one sentence.",
    "Translate 'good morning' into Spanish and German.",
    "What is 17 times 23?",
    "Give me a short tip for learning to code.",
    "Who wrote Romeo and Juliet, and when?",
]


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

    return [chat_token_ids(tokenizer, [{"role": "user", "content": text}]) for text in PROMPTS]


@pytest.fixture(scope="session")
def hf_default_model():
    from transformers import AutoModelForCausalLM

    from engine.model_config import default_model_path

    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32)
    return model.eval()


def make_llm(runner, **overrides):
    from engine.llm import LLM

    return LLM(Settings(**overrides), runner=runner)
