"""Issue 15, must-holds 1, 2 and 4, through `ferry serve` with the default model and the official clients.

The openai SDK's beta parse() with 10 pydantic schemas (sampled and greedy), tool_choice="required" over 3 tools on 20
sampled choices, LangChain's with_structured_output and bind_tools, a streamed tool call reassembled by the SDK equal
to the same seed's non-streamed one, regex and choice constraints on 100 sampled outputs each, n=4 constrained, tool
history back through the template, and a table of bad structured-output and tool parameters (each a 400 naming the
parameter, the server serving on).
"""
from __future__ import annotations

import asyncio
import re
from enum import Enum
from typing import Annotated, Literal, Optional

import openai
import pytest
from _pipeline import MODEL, serving
from pydantic import BaseModel, Field

TIMEOUT = 300  # a busy CI machine; a healthy run takes seconds per call
MSG = [{"role": "user", "content": "Describe a person as JSON."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("structured"), "--max-num-seqs", "128") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", timeout=TIMEOUT, max_retries=0)


def run_all(server, calls):
    """Run coroutine factories concurrently against one AsyncOpenAI client: the engine batches them."""
    async def main():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", timeout=TIMEOUT,
                                      max_retries=0) as ac:
            return await asyncio.gather(*(call(ac) for call in calls))
    return asyncio.run(main())


# ---------------------------------------------------------------- ten schemas

class Color(str, Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Person(BaseModel):
    name: str = Field(max_length=16)
    age: int = Field(ge=0, le=120)


class Point(BaseModel):
    x: int = Field(ge=-100, le=100)
    y: int = Field(ge=-100, le=100)


class Shape(BaseModel):
    kind: Literal["circle", "square"]
    center: Point


class Palette(BaseModel):
    colors: list[Color] = Field(min_length=1, max_length=4)


class Score(BaseModel):
    value: float = Field(ge=0, le=1)
    passed: bool


class Contact(BaseModel):
    email: Optional[str] = Field(default=None, max_length=24)
    phone: Optional[int] = Field(default=None, ge=0, le=999999)


class Team(BaseModel):
    lead: Person
    members: list[Person] = Field(max_length=2)


class Tags(BaseModel):
    tags: list[Annotated[str, Field(max_length=12)]] = Field(min_length=1, max_length=3)
    count: int = Field(ge=1, le=3)


class Weather(BaseModel):
    city: str = Field(max_length=16)
    unit: Literal["C", "F"]
    temperature: int = Field(ge=-50, le=60)


class Order(BaseModel):
    item: str = Field(max_length=12)
    quantity: int = Field(ge=1, le=9)
    express: Optional[bool] = None
    shape: Optional[Shape] = None


SCHEMAS = [Person, Point, Shape, Palette, Score, Contact, Team, Tags, Weather, Order]


def test_parse_ten_pydantic_schemas_sampled_and_greedy(server):
    def call(model, temperature):
        async def go(ac):
            return model, await ac.beta.chat.completions.parse(
                model=MODEL, messages=[{"role": "user", "content": f"Give a {model.__name__}."}],
                response_format=model, temperature=temperature, seed=11, max_tokens=100)
        return go

    results = run_all(server, [call(m, t) for m in SCHEMAS for t in (0.0, 0.8)])
    for model, completion in results:
        choice = completion.choices[0]
        assert choice.finish_reason == "stop", (model.__name__, choice.message.content)
        assert isinstance(choice.message.parsed, model), (model.__name__, choice.message.content)


# ---------------------------------------------------------------- tools

class GetWeather(BaseModel):
    city: str = Field(max_length=12)
    unit: Literal["celsius", "fahrenheit"]


class AddNumbers(BaseModel):
    a: int = Field(ge=-1000, le=1000)
    b: int = Field(ge=-1000, le=1000)


class SendEmail(BaseModel):
    to: str = Field(max_length=12)
    urgent: bool


TOOL_MODELS = {"get_weather": GetWeather, "add_numbers": AddNumbers, "send_email": SendEmail}
TOOLS = [openai.pydantic_function_tool(m, name=n, description=f"{n.replace('_', ' ')}") for n, m in
         TOOL_MODELS.items()]
TOOL_MSG = [{"role": "user", "content": "What is the weather in Paris? Also add 2 and 3."}]


def _check_calls(message):
    assert message.tool_calls, message.content
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        TOOL_MODELS[call.function.name].model_validate_json(call.function.arguments)  # raises if invalid


def test_tool_choice_required_twenty_sampled(client):
    r = client.chat.completions.create(model=MODEL, messages=TOOL_MSG, tools=TOOLS,
                                       tool_choice="required", parallel_tool_calls=False, n=20, temperature=1.0,
                                       seed=5, max_tokens=80)
    assert len(r.choices) == 20
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None and len(choice.message.tool_calls) == 1
        _check_calls(choice.message)
    assert len({c.message.tool_calls[0].function.name for c in r.choices}) > 1  # sampled over the three tools


def test_named_tool_choice_and_tools_in_the_prompt(client):
    without = client.chat.completions.create(model=MODEL, messages=TOOL_MSG, max_tokens=1)
    r = client.chat.completions.create(model=MODEL, messages=TOOL_MSG, tools=TOOLS, max_tokens=120, temperature=0.0,
                                       tool_choice={"type": "function", "function": {"name": "add_numbers"}})
    assert r.usage.prompt_tokens > without.usage.prompt_tokens + 100  # the tool signatures are in the prompt
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "add_numbers"
    AddNumbers.model_validate_json(call.function.arguments)
    # the call and its result go back through the template, and the chat goes on
    history = TOOL_MSG + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                          {"role": "tool", "tool_call_id": call.id, "content": "5"}]
    again = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=8, temperature=0.0)
    assert again.usage.prompt_tokens > r.usage.prompt_tokens


def test_streamed_tool_call_equals_non_streamed(client):
    kw = dict(model=MODEL, messages=TOOL_MSG, tools=TOOLS, tool_choice="required", temperature=1.0, seed=123,
              max_tokens=120, parallel_tool_calls=False)
    plain = client.chat.completions.create(**kw).choices[0]
    with client.chat.completions.stream(**kw) as stream:
        for _ in stream:
            pass
        streamed = stream.get_final_completion().choices[0]
    assert streamed.finish_reason == plain.finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls] == \
        [(c.function.name, c.function.arguments) for c in plain.message.tool_calls]


def test_langchain_structured_output_and_bind_tools(server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=server.url + "/v1", api_key="none", model=MODEL, temperature=0,
                     max_tokens=120, timeout=TIMEOUT, max_retries=0)
    person = llm.with_structured_output(Person).invoke("Describe a person.")
    assert isinstance(person, Person)
    weather = llm.with_structured_output(Weather, method="function_calling").invoke("Weather in Rome?")
    assert isinstance(weather, Weather)
    msg = llm.bind_tools([GetWeather, AddNumbers], tool_choice="any", parallel_tool_calls=False).invoke("Add 2 and 3.")
    assert msg.tool_calls
    for call in msg.tool_calls:
        {"GetWeather": GetWeather, "AddNumbers": AddNumbers}[call["name"]].model_validate(call["args"])


# ---------------------------------------------------------------- regex, choice, n

def test_regex_and_choice_hold_on_a_hundred_samples_each(client):
    pattern = r"[A-Z][a-z]{1,8}-\d{2,4}"
    # max_tokens: room for the longest match spelled one character a token, and EOS
    r = client.completions.create(model=MODEL, prompt="A product code:", max_tokens=20, n=100, temperature=1.0,
                                  extra_body={"structured_outputs": {"regex": pattern}})
    assert len(r.choices) == 100 and all(re.fullmatch(pattern, c.text) for c in r.choices), \
        [c.text for c in r.choices if not re.fullmatch(pattern, c.text)]
    options = ["positive", "negative", "neutral", "mixed feelings"]
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Sentiment of 'ok'?"}],
                                       max_tokens=20, n=100, temperature=1.0, extra_body={"guided_choice": options})
    assert len(r.choices) == 100 and all(c.message.content in options for c in r.choices), \
        [(c.message.content, c.finish_reason) for c in r.choices if c.message.content not in options]
    assert len({c.message.content for c in r.choices}) > 1  # sampled, not one answer


def test_n_four_constrained_streaming_with_seed(client):
    kw = dict(model=MODEL, messages=MSG, n=4, temperature=1.0, seed=9, max_tokens=120,
              response_format={"type": "json_schema", "json_schema": {"name": "p", "strict": True,
                                                                       "schema": Person.model_json_schema()}})
    plain = client.chat.completions.create(**kw)
    texts = [""] * 4
    for chunk in client.chat.completions.create(**kw, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert texts == [c.message.content for c in plain.choices]  # seeds make streaming and not the same
    for text in texts:
        Person.model_validate_json(text)


# ---------------------------------------------------------------- bad parameters

FN = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
BAD = [
    ({"response_format": {"type": "bogus"}}, "response_format.type"),
    ({"response_format": "json"}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}, "strict": "yes"}}},
     "response_format.json_schema.strict"),
    ({"structured_outputs": {"regex": "[a-"}}, "structured_outputs.regex"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {"structural_tag": "x"}}, "structured_outputs.structural_tag"),
    ({"structured_outputs": {"grammar": "root ::= undefined_rule"}}, "structured_outputs.grammar"),
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_json": {}, "guided_regex": "a"}, "guided_regex"),  # the second of two constraints is named
    ({"guided_regex": "(", "stream": True}, "guided_regex"),
    ({"guided_regex": "a+", "ignore_eos": True}, "ignore_eos"),
    ({"tools": {"type": "function"}}, "tools"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [FN, FN]}, "tools"),
    ({"tools": [FN], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [FN], "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice.function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [FN], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"tools": [FN], "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": 1}}]}]}, "messages"),
]


def test_bad_structured_and_tool_parameters_are_400s_naming_them(client, server):
    import httpx

    assert len(BAD) >= 15
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
        for extra, param in BAD:
            body = {"messages": MSG, "max_tokens": 4, **extra}
            r = http.post("/v1/chat/completions", json=body)
            assert r.status_code == 400, (extra, r.status_code, r.text)
            err = r.json()["error"]
            assert err["param"] == param, (extra, err)
        r = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "tools": [FN]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
    ok = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=60, temperature=0.0,
                                        extra_body={"guided_regex": "(yes|no)"})
    assert ok.choices[0].message.content in ("yes", "no")
