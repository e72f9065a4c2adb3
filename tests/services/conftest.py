import pytest


@pytest.fixture(scope="session")
def tokenizer():
    """The default model's real tokenizer (cached by the engine after its first conversion)."""
    from engine.tokenizer import load_tokenizer
    from shared.settings import Settings

    return load_tokenizer(Settings())
