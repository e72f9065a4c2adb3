import pytest

from services.tokenizer.prompts import PromptBuilder, normalize_messages
from shared.codec import pack_ids, unpack_ids
from shared.errors import InvalidParameter, PromptTooLong
from shared.messages import TokenizeRequest
from shared.sampling_params import SamplingParams


@pytest.fixture
def builder(tokenizer):
    return PromptBuilder(tokenizer, max_model_len=64, vocab_size=len(tokenizer))


def _chat(messages, **params):
    return TokenizeRequest("r", 0, SamplingParams(**params), messages=messages)


def test_chat_template_string_and_text_parts_agree(builder, tokenizer):
    as_string = builder.prompt_ids(_chat([{"role": "user", "content": "Hi there"}]))
    as_parts = builder.prompt_ids(_chat([{"role": "user", "content": [{"type": "text", "text": "Hi there"}]}]))
    assert as_string == as_parts
    text = tokenizer.decode(as_string)
    assert text.endswith("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<|im_start|>system") == 1  # the template's default system prompt, once


def test_prepare_fills_max_tokens_and_packs_ids(builder):
    req = builder.prepare(_chat([{"role": "user", "content": "Hi"}], max_tokens=None))
    n = len(unpack_ids(req.prompt_token_ids))
    assert req.params.max_tokens == 64 - n


def test_rejections(builder):
    with pytest.raises(InvalidParameter):
        normalize_messages([])
    with pytest.raises(InvalidParameter):
        normalize_messages([{"role": "wizard", "content": "x"}])
    with pytest.raises(InvalidParameter):
        normalize_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])
    with pytest.raises(PromptTooLong):
        builder.prepare(_chat([{"role": "user", "content": "Hi"}], max_tokens=60))
    with pytest.raises(PromptTooLong):
        builder.prepare(TokenizeRequest("r", 0, SamplingParams(), prompt="word " * 100))
    with pytest.raises(InvalidParameter):
        builder.prepare(TokenizeRequest("r", 0, SamplingParams(), prompt_token_ids=pack_ids([1, 10**7])))


def test_completion_prompts(builder, tokenizer):
    ids = builder.prompt_ids(TokenizeRequest("r", 0, SamplingParams(), prompt="Hello"))
    assert tokenizer.decode(ids) == "Hello"
    assert builder.prompt_ids(TokenizeRequest("r", 0, SamplingParams(), prompt_token_ids=pack_ids([5, 6]))) == [5, 6]
