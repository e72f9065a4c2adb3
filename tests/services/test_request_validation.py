"""The parser's table of bad inputs: each a 400 (InvalidParameter) naming its parameter, never another error."""
import json

import pytest

from services.gateway.body_checks import check_values, load_json
from services.gateway.limits import RequestLimits
from services.gateway.protocol import parse_request
from shared.errors import InvalidParameter
from shared.sampling_params import SEED_LIMIT, SamplingParams, choice_seed
from shared.template_kwargs import check_template_kwargs

NAME = "m"
MSG = [{"role": "user", "content": "hi"}]
CHAT = {"messages": MSG}
COMP = {"prompt": "hi"}
NAN, INF = float("nan"), float("inf")

BAD = [  # (chat?, body, param)
    # seeds: 0 <= seed < 2**63
    (False, {**COMP, "seed": 2**64 - 1, "n": 2}, "seed"),
    (False, {**COMP, "seed": 2**63}, "seed"),
    (False, {**COMP, "seed": -1}, "seed"),
    (False, {**COMP, "seed": "1"}, "seed"),
    (False, {**COMP, "seed": 1.5}, "seed"),
    (False, {**COMP, "seed": True}, "seed"),
    # n and best_of
    (False, {**COMP, "n": 10000}, "n"),
    (False, {**COMP, "n": 129}, "n"),
    (False, {**COMP, "n": 0}, "n"),
    (False, {**COMP, "n": -3}, "n"),
    (False, {**COMP, "n": 2**31}, "n"),
    (False, {**COMP, "n": 1.5}, "n"),
    (False, {**COMP, "n": [2]}, "n"),
    (False, {**COMP, "best_of": 3, "stream": True}, "best_of"),  # the best are known only at the end
    (False, {**COMP, "best_of": 2, "n": 3}, "best_of"),
    (False, {**COMP, "best_of": 129}, "best_of"),
    (False, {**COMP, "best_of": "x"}, "best_of"),
    (False, {"prompt": ["a"] * 3, "n": 100}, "n"),  # 300 sequences
    (False, {"prompt": ["a"] * 129}, "prompt"),
    # floats: finite, in range
    (True, {**CHAT, "temperature": NAN}, "temperature"),
    (True, {**CHAT, "temperature": INF}, "temperature"),
    (True, {**CHAT, "temperature": -0.1}, "temperature"),
    (True, {**CHAT, "temperature": "hot"}, "temperature"),
    (True, {**CHAT, "top_p": NAN}, "top_p"),
    (True, {**CHAT, "top_p": 0}, "top_p"),
    (True, {**CHAT, "min_p": NAN}, "min_p"),
    (True, {**CHAT, "min_p": 1.5}, "min_p"),
    (True, {**CHAT, "repetition_penalty": NAN}, "repetition_penalty"),
    (True, {**CHAT, "repetition_penalty": INF}, "repetition_penalty"),
    (True, {**CHAT, "repetition_penalty": 0}, "repetition_penalty"),
    (True, {**CHAT, "presence_penalty": -INF}, "presence_penalty"),
    (True, {**CHAT, "presence_penalty": 3}, "presence_penalty"),
    (True, {**CHAT, "frequency_penalty": NAN}, "frequency_penalty"),
    (True, {**CHAT, "temperature": 2**70}, "temperature"),
    # ints: int32
    (False, {**COMP, "max_tokens": 2**31}, "max_tokens"),
    (False, {**COMP, "max_tokens": 2**63}, "max_tokens"),
    (False, {**COMP, "max_tokens": 1e300}, "max_tokens"),
    (False, {**COMP, "max_tokens": 0}, "max_tokens"),
    (False, {**COMP, "max_tokens": "5"}, "max_tokens"),
    (True, {**CHAT, "max_completion_tokens": -1}, "max_completion_tokens"),
    (False, {**COMP, "top_k": 2**31}, "top_k"),
    (False, {**COMP, "top_k": -2}, "top_k"),
    (False, {**COMP, "min_tokens": 2**40}, "min_tokens"),
    (False, {**COMP, "min_tokens": 20, "max_tokens": 10}, "min_tokens"),
    (False, {**COMP, "logprobs": 21}, "logprobs"),
    (False, {**COMP, "logprobs": True}, "logprobs"),
    (True, {**CHAT, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    (True, {**CHAT, "top_logprobs": 2}, "top_logprobs"),
    (True, {**CHAT, "logprobs": 1}, "logprobs"),
    # token ids
    (False, {"prompt": [2**31]}, "prompt"),
    (False, {"prompt": [-1]}, "prompt"),
    (False, {"prompt": [1, 2**64]}, "prompt"),
    (False, {"prompt": [[1], [-5]]}, "prompt"),
    (False, {"prompt": [True, 1]}, "prompt"),
    (False, {"prompt": [1.5]}, "prompt"),
    (False, {"prompt": [[]]}, "prompt"),
    (False, {"prompt": ""}, "prompt"),
    (False, {"prompt": 5}, "prompt"),
    (False, {}, "prompt"),
    (False, {**COMP, "stop_token_ids": [-1]}, "stop_token_ids"),
    (False, {**COMP, "stop_token_ids": [2**31]}, "stop_token_ids"),
    (False, {**COMP, "stop_token_ids": 5}, "stop_token_ids"),
    (False, {**COMP, "stop_token_ids": list(range(1025))}, "stop_token_ids"),
    (False, {**COMP, "logit_bias": {"-1": 1}}, "logit_bias"),
    (False, {**COMP, "logit_bias": {"2147483648": 1}}, "logit_bias"),
    (False, {**COMP, "logit_bias": {"1" * 5000: 1}}, "logit_bias"),
    (False, {**COMP, "logit_bias": {"x": 1}}, "logit_bias"),
    (False, {**COMP, "logit_bias": {5: 1}}, "logit_bias"),  # only from a caller that skipped JSON
    (False, {**COMP, "logit_bias": {"²": 1}}, "logit_bias"),
    (False, {**COMP, "logit_bias": {"1": NAN}}, "logit_bias"),
    (False, {**COMP, "logit_bias": {"1": 101}}, "logit_bias"),
    (False, {**COMP, "logit_bias": {"1": "1"}}, "logit_bias"),
    (False, {**COMP, "logit_bias": [1]}, "logit_bias"),
    (False, {**COMP, "logit_bias": {str(i): 1 for i in range(1025)}}, "logit_bias"),
    # stop strings
    (False, {**COMP, "stop": ["a"] * 17}, "stop"),
    (False, {**COMP, "stop": "x" * 513}, "stop"),
    (False, {**COMP, "stop": ""}, "stop"),
    (False, {**COMP, "stop": [1]}, "stop"),
    (False, {**COMP, "stop": {"a": 1}}, "stop"),
    (False, {**COMP, "stop": "\ud800"}, "stop"),
    # strings that UTF-8 cannot carry, integers msgpack cannot
    (True, {"messages": [{"role": "user", "content": "\ud800"}]}, "messages"),
    (True, {"messages": [{"role": "user", "content": [{"type": "text", "text": "a\udfffb"}]}]}, "messages"),
    (False, {"prompt": "\udc80"}, "prompt"),
    (False, {"prompt": "hi", "user": "\ud800"}, "user"),
    (True, {"messages": [{"role": "user", "content": "hi", "x": 2**64}]}, "messages"),
    (True, {"messages": [{"role": "user", "content": "hi", "x": -(2**63) - 1}]}, "messages"),
    (True, {"messages": [{"role": "user", "content": "hi", "x": NAN}]}, "messages"),
    # shapes
    (True, {"messages": []}, "messages"),
    (True, {"messages": "hi"}, "messages"),
    (True, {"messages": [1]}, "messages"),
    (True, {}, "messages"),
    (True, {**CHAT, "stream": "yes"}, "stream"),
    (True, {**CHAT, "stream_options": 1}, "stream_options"),
    (True, {**CHAT, "stream_options": {"include_usage": "yes"}}, "stream_options"),
    (True, {**CHAT, "stream_options": {"continuous_usage_stats": True}}, "stream_options"),
    (True, {**CHAT, "model": 5}, "model"),
    (True, {**CHAT, "ignore_eos": 1}, "ignore_eos"),
    (True, {**CHAT, "add_generation_prompt": "no"}, "add_generation_prompt"),
    # unsupported fields are named, never ignored
    (True, {**CHAT, "tools": [{"type": "function"}]}, "tools[0].function"),  # issue 15: tools are read, and checked
    (True, {**CHAT, "response_format": {"type": "bogus"}}, "response_format.type"),
    (True, {**CHAT, "nonsense": 1}, "nonsense"),
    (True, {**CHAT, "prompt": "hi"}, "prompt"),
    (False, {**COMP, "messages": MSG}, "messages"),
    (False, {**COMP, "echo": "yes"}, "echo"),
    (False, {**COMP, "suffix": "x"}, "suffix"),
    (False, {**COMP, "prompt_logprobs": 21}, "prompt_logprobs"),
    (False, {**COMP, "echo": True, "max_tokens": 0, "n": 2}, "n"),  # a prompt is scored once
    (False, {**COMP, "echo": True, "max_tokens": -1}, "max_tokens"),
    (True, {**CHAT, "max_tokens": 0}, "max_tokens"),
    (True, {**CHAT, "continue_final_message": True}, "continue_final_message"),  # add_generation_prompt too
    (True, {**CHAT, "continue_final_message": 1, "add_generation_prompt": False}, "continue_final_message"),
    # chat_template_kwargs: an allow-list of plain values
    (True, {**CHAT, "chat_template_kwargs": {"chat_template": "{% for x in range(99) %}{% endfor %}"}},
     "chat_template_kwargs.chat_template"),
    (True, {**CHAT, "chat_template_kwargs": {"tokenize": True}}, "chat_template_kwargs.tokenize"),
    (True, {**CHAT, "chat_template_kwargs": {"add_generation_prompt": False}},
     "chat_template_kwargs.add_generation_prompt"),
    (True, {**CHAT, "chat_template_kwargs": {"enable_thinking": [1] * 3}}, "chat_template_kwargs.enable_thinking"),
    (True, {**CHAT, "chat_template_kwargs": {"enable_thinking": "x" * 65}}, "chat_template_kwargs.enable_thinking"),
    (True, {**CHAT, "chat_template_kwargs": "x"}, "chat_template_kwargs"),
    # depth
    (True, {**CHAT, "x": json.loads("[" * 40 + "]" * 40)}, "x"),
    (True, {"messages": [{"role": "user", "content": json.loads("[" * 33 + "]" * 33)}]}, "messages"),
]


@pytest.mark.parametrize("chat,body,param", BAD, ids=[f"{i}-{p}" for i, (_, _, p) in enumerate(BAD)])
def test_bad_input_is_400_naming_the_parameter(chat, body, param):
    with pytest.raises(InvalidParameter) as e:
        parse_request(body, chat, NAME)
    assert e.value.status == 400 and e.value.param == param, e.value.message
    json.dumps(e.value.to_dict())  # the error body itself can always be sent


GOOD = [
    (False, {**COMP, "seed": 2**63 - 1, "n": 2}),
    (False, {**COMP, "seed": 0}),
    (False, {**COMP, "n": 128}),
    (False, {**COMP, "n": 2, "best_of": 2}),
    (False, {**COMP, "n": 2, "best_of": 5}),
    (False, {**COMP, "echo": True, "max_tokens": 0, "logprobs": 5, "prompt_logprobs": 2}),
    (False, {**COMP, "suffix": ""}),
    (True, {**CHAT, "continue_final_message": True, "add_generation_prompt": False, "echo": True}),
    (False, {"prompt": ["a"] * 2, "n": 128}),
    (False, {**COMP, "max_tokens": 2**31 - 1}),
    (False, {"prompt": [0, 2**31 - 1]}),
    (False, {**COMP, "stop": ["a"] * 16, "stop_token_ids": [0], "logit_bias": {"0": -100, "2147483647": 100}}),
    (True, {**CHAT, "chat_template_kwargs": {"enable_thinking": False}}),
    (True, {**CHAT, "response_format": {"type": "text"}, "user": "u", "tools": None}),
    (True, {"messages": [{"role": "user", "content": "héllo ✓ 😀"}]}),
]


@pytest.mark.parametrize("chat,body", GOOD)
def test_inputs_at_the_limits_are_accepted(chat, body):
    assert parse_request(body, chat, NAME).model == NAME  # no InvalidParameter: accepted


def test_caps_follow_the_limits():
    tight = RequestLimits(max_n=2, max_stop_strings=1, max_seqs_per_request=3)
    with pytest.raises(InvalidParameter, match="at most 2"):
        parse_request({**COMP, "n": 3}, False, NAME, tight)
    with pytest.raises(InvalidParameter) as e:
        parse_request({"prompt": ["a", "b"], "n": 2}, False, NAME, tight)
    assert e.value.param == "n"
    with pytest.raises(InvalidParameter):
        parse_request({**COMP, "stop": ["a", "b"]}, False, NAME, tight)


def test_json_nested_100000_deep_is_a_400():
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        with pytest.raises(InvalidParameter) as e:
            load_json(raw)
        assert e.value.code == "invalid_json"
    with pytest.raises(InvalidParameter):
        load_json(b'{"a": "\xff"}')
    with pytest.raises(InvalidParameter):
        check_values(load_json(b'{"temperature": NaN}'), 32)
    check_values(load_json(b'{"a": [[[1]]], "b": "x"}'), 32)


def test_seeds_per_choice_never_overflow():
    assert choice_seed(SEED_LIMIT - 1, 1) == 0
    assert len({choice_seed(SEED_LIMIT - 2, i) for i in range(4)}) == 4
    assert all(0 <= choice_seed(SEED_LIMIT - 1, i) < SEED_LIMIT for i in range(128))
    with pytest.raises(InvalidParameter):
        SamplingParams(seed=2**64 - 1).validate()


def test_template_kwargs_checked_again_where_rendered():
    assert check_template_kwargs({"enable_thinking": True}) == {"enable_thinking": True}
    for bad in ({"chat_template": "x"}, {1: True}, {"enable_thinking": {"a": 1}}, []):
        with pytest.raises(InvalidParameter):
            check_template_kwargs(bad)


def test_echo_best_of_and_chat_flags_reach_the_engine():
    """Issue 14: what each new field asks of the engine (and what only the gateway does)."""
    p = parse_request({**COMP, "echo": True, "max_tokens": 0, "logprobs": 2}, False, NAME)
    assert (p.params.echo, p.params.prompt_logprobs, p.params.max_tokens, p.params.logprobs) == (True, 2, 0, 2)
    p = parse_request({**COMP, "echo": True}, False, NAME)
    assert p.params.echo and p.params.prompt_logprobs is None  # the text only: nothing to score
    p = parse_request({**COMP, "prompt_logprobs": 3, "logprobs": 1}, False, NAME)
    assert not p.params.echo and p.params.prompt_logprobs == 3 and p.extras.prompt_logprobs == 3
    p = parse_request({**COMP, "n": 2, "best_of": 4}, False, NAME)
    assert (p.params.n, p.extras.returned_n, p.params.logprobs, p.extras.show_logprobs) == (4, 2, 0, False)
    chat = {"messages": [*MSG, {"role": "assistant", "content": "The answer is"}], "echo": True,
            "continue_final_message": True, "add_generation_prompt": False, "logprobs": True}
    p = parse_request(chat, True, NAME)
    assert p.extras.continue_final_message and not p.add_generation_prompt and p.extras.echo_text == "The answer is"
    assert p.params.logprobs_follow_text and not p.params.echo
