"""Issue 15 in the engine alone: the runner's matchers constrain sampled and greedy rows of the default model, a
complete grammar ends the sequence at EOS, and unconstrained rows of the same batch are left as they were."""
import json
import re

from shared.sampling_params import SamplingParams
from tests.engine.conftest import make_llm

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


def _params(kind, spec, **kw):
    return SamplingParams(max_tokens=kw.pop("max_tokens", 60), grammar_kind=kind, grammar_spec=spec, **kw)


def _decode(tokenizer, ids, eos):
    assert ids and ids[-1] in eos, "the grammar did not end the sequence with EOS"
    return tokenizer.decode(ids[:-1])


def test_constrained_rows_follow_their_grammars(default_runner, tokenizer, chat_prompts):
    llm = make_llm(default_runner)
    eos = set(llm.model_config.eos_token_ids)
    spec = json.dumps(SCHEMA)
    params = [_params("json_schema", spec, temperature=0.0),
              _params("json_schema", spec, temperature=1.0, seed=3, n=3),
              _params("regex", r"[A-Z][a-z]{2,6} \d{3}", temperature=1.0, n=4),
              _params("choice", json.dumps(["yes", "no", "maybe so"]), temperature=1.0, n=4),
              SamplingParams(max_tokens=20, temperature=0.0)]  # unconstrained, in the same batch
    prompts = [chat_prompts[0]] * 4 + [chat_prompts[1]]
    outs = llm.generate(prompts, params)
    for ids in outs[0] + outs[1]:
        obj = json.loads(_decode(tokenizer, ids, eos))
        assert set(obj) == {"name", "age"} and 0 <= obj["age"] <= 120 and len(obj["name"]) <= 12
    for ids in outs[2]:
        assert re.fullmatch(r"[A-Z][a-z]{2,6} \d{3}", _decode(tokenizer, ids, eos))
    for ids in outs[3]:
        assert _decode(tokenizer, ids, eos) in ("yes", "no", "maybe so")
    alone = make_llm(default_runner).generate([chat_prompts[1]], params[4])[0][0]
    assert outs[4][0] == alone  # the unconstrained row is untouched by its neighbours' masks
    assert default_runner.grammars.active == 0  # finished sequences gave their matchers back
