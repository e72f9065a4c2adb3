import pytest

from services.gateway import responses as R
from services.gateway.protocol import parse_request
from shared.codec import unpack_ids
from shared.errors import InvalidParameter, ModelNotFound
from shared.messages import ChoiceDelta, TokenLogprob

NAME = "SmolLM2-135M-Instruct"
CHAT = {"model": NAME, "messages": [{"role": "user", "content": "hi"}]}


def test_chat_params_under_openai_and_vllm_names():
    p = parse_request({**CHAT, "temperature": 0, "max_completion_tokens": 5, "max_tokens": 9, "n": 2, "seed": 3,
                       "stop": "x", "logit_bias": {"12": 5}, "logprobs": True, "top_logprobs": 2, "top_k": 4,
                       "min_p": 0.1, "repetition_penalty": 1.1, "min_tokens": 1, "ignore_eos": True,
                       "stop_token_ids": [7], "stream": True, "stream_options": {"include_usage": True}},
                      chat=True, served_name=NAME)
    s = p.params
    assert (s.temperature, s.max_tokens, s.n, s.seed, s.stop, s.logit_bias) == (0.0, 5, 2, 3, ["x"], {12: 5.0})
    assert (s.logprobs, p.top_logprobs, s.top_k, s.min_p, s.min_tokens, s.ignore_eos) == (2, 2, 4, 0.1, 1, True)
    assert s.stop_token_ids == [7] and p.stream and p.include_usage
    assert parse_request(CHAT, True, NAME).params.max_tokens is None  # up to the context


@pytest.mark.parametrize("body,param", [
    ({**CHAT, "temperature": -1}, "temperature"),
    ({**CHAT, "messages": []}, "messages"),
    ({**CHAT, "max_tokens": 0}, "max_tokens"),
    ({**CHAT, "top_p": 2}, "top_p"),
    ({**CHAT, "n": "two"}, "n"),
    ({**CHAT, "temperature": True}, "temperature"),
    ({**CHAT, "stop": [1]}, "stop"),
    ({**CHAT, "top_logprobs": 3}, "top_logprobs"),
    ({**CHAT, "logit_bias": {"a": 1}}, "logit_bias"),
])
def test_bad_params_are_400(body, param):
    with pytest.raises(InvalidParameter) as e:
        parse_request(body, True, NAME)
    assert e.value.status == 400 and e.value.param == param
    assert set(e.value.to_dict()["error"]) == {"message", "type", "param", "code"}


def test_unknown_model_is_404_and_missing_model_is_fine():
    with pytest.raises(ModelNotFound) as e:
        parse_request({**CHAT, "model": "gpt-9"}, True, NAME)
    assert e.value.status == 404
    assert parse_request({"messages": CHAT["messages"]}, True, NAME).model == NAME


def test_completion_prompt_forms():
    assert parse_request({"prompt": "hi"}, False, NAME).prompts == ["hi"]
    ids = parse_request({"prompt": [1, 2, 3]}, False, NAME).prompts
    assert unpack_ids(ids[0]).tolist() == [1, 2, 3]
    two = parse_request({"prompt": ["a", [4]]}, False, NAME).prompts
    assert two[0] == "a" and unpack_ids(two[1]).tolist() == [4]
    assert parse_request({"prompt": "hi"}, False, NAME).params.max_tokens == 16  # OpenAI's default
    for bad in ("", [], None, [[]], {"x": 1}):
        with pytest.raises(InvalidParameter):
            parse_request({"prompt": bad}, False, NAME)


def test_collector_usage_and_shapes():
    c = R.Collector(2)
    c.add(0, 0, ChoiceDelta(0, "Hel", None, 1), prompt_tokens=5, cached=2)
    c.add(0, 1, ChoiceDelta(1, "Yo", "length", 2), prompt_tokens=5, cached=2)
    assert not c.done
    c.add(0, 0, ChoiceDelta(0, "lo", "stop", 3), prompt_tokens=0, cached=0)
    assert c.done
    body = R.chat_response("id", 1, NAME, c, None, 0)
    assert [ch["message"]["content"] for ch in body["choices"]] == ["Hello", "Yo"]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10,
                             "prompt_tokens_details": {"cached_tokens": 2}}
    done = R.chat_delta_choice(0, ChoiceDelta(0, "", "stop"), None, 0)
    assert done["delta"] == {} and done["finish_reason"] == "stop"
    assert R.sse("[DONE]") == b"data: [DONE]\n\n"


def test_logprob_shapes():
    lps = [TokenLogprob("He", -0.5, ["He", "Hi"], [-0.5, -1.0]), TokenLogprob("llo", -0.1, ["llo"], [-0.1])]
    chat = R.chat_logprobs(lps, 1)
    assert chat["content"][0] == {"token": "He", "logprob": -0.5, "bytes": [72, 101],
                                  "top_logprobs": [{"token": "He", "logprob": -0.5, "bytes": [72, 101]}]}
    comp = R.completion_logprobs(lps, 2, 10)
    assert comp["text_offset"] == [10, 12] and comp["top_logprobs"][0] == {"He": -0.5, "Hi": -1.0}
