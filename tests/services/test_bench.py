"""ferry bench's pure parts: the workload definition, arrivals, summary math, the dummy tokenizer."""
import math

import numpy as np
import pytest

from engine.tokenizer import DummyTokenizer, chat_token_ids
from services.bench.__main__ import parse_args
from services.bench.stats import (
    RequestRecord,
    concurrency_at_start,
    max_concurrency,
    percentiles,
    records_to_dicts,
    summarize,
)
from services.bench.workload import fixed, poisson_arrivals, sharegpt_synth


@pytest.fixture(scope="module")
def workload():
    return sharegpt_synth(1000, 128256)


def test_sharegpt_synth_matches_design_totals(workload):
    assert len(workload) == 1000
    assert sum(len(r.prompt) for r in workload) == 201_134
    assert sum(r.output_len for r in workload) == 179_437
    assert all(4 <= len(r.prompt) <= 1024 and 4 <= r.output_len <= 2048 - len(r.prompt) for r in workload)
    assert all(0 <= t < 128256 for r in workload[:50] for t in r.prompt)


def test_sharegpt_synth_prefix_is_the_same_requests(workload):
    head = sharegpt_synth(20, 128256)
    assert [r.prompt for r in head] == [r.prompt for r in workload[:20]]
    assert [r.output_len for r in head] == [r.output_len for r in workload[:20]]
    with pytest.raises(ValueError):
        sharegpt_synth(1001)


def test_fixed_and_arrivals():
    reqs = fixed(3, 5, 256, 1000)
    assert [len(r.prompt) for r in reqs] == [5, 5, 5] and all(r.output_len == 256 for r in reqs)
    assert poisson_arrivals(4, float("inf")) == [0.0] * 4
    times = poisson_arrivals(20000, 16.0, seed=1)
    assert times[0] == 0.0 and all(b >= a for a, b in zip(times, times[1:]))
    assert abs(len(times) / times[-1] - 16.0) < 0.5  # the mean rate


def test_percentiles():
    p = percentiles(range(1, 101))
    assert p["mean"] == 50.5 and p["p50"] == 50.5 and math.isclose(p["p99"], 99.01)
    assert percentiles([]) == {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}


def test_summary_math():
    a = RequestRecord(10, 4, start=0.0, ttft=0.1, latency=0.4, itl=[0.1, 0.1, 0.1], output_tokens=4)
    b = RequestRecord(20, 2, start=0.2, ttft=0.3, latency=0.5, itl=[0.2], output_tokens=2)
    bad = RequestRecord(5, 9, error="HTTP 503")
    s = summarize([a, b, bad], duration=2.0)
    assert s["completed"] == 2 and s["failed"] == 1 and s["errors"] == ["HTTP 503"]
    assert s["input_tokens"] == 30 and s["output_tokens"] == 6
    assert s["request_throughput"] == 1.0 and s["output_throughput"] == 3.0 and s["total_token_throughput"] == 18.0
    assert math.isclose(s["ttft_ms"]["p50"], 200.0)
    assert math.isclose(a.tpot, 0.1) and math.isclose(b.tpot, 0.2)
    assert math.isclose(s["tpot_ms"]["mean"], 150.0)
    assert math.isclose(s["itl_ms"]["mean"], 125.0)
    assert RequestRecord(1, 1, output_tokens=1).tpot is None
    assert max_concurrency([a, b]) == 2 and concurrency_at_start([a, b]) == [1, 2]
    assert records_to_dicts([a])[0]["tpot"] == a.tpot and "itl" not in records_to_dicts([a])[0]


def test_cli_defaults():
    args = parse_args([])
    assert args.num_requests == 1000 and args.request_rate == "inf" and args.workload == "sharegpt-synth"


def test_dummy_tokenizer_round_trips_and_decodes_any_id():
    tok = DummyTokenizer(512, bos_token_id=1, eos_token_ids=[2])
    assert len(tok) == 512
    assert tok.decode([5, 511]) == " t5 t511"
    assert tok.decode([1, 5, 2], skip_special_tokens=True, clean_up_tokenization_spaces=False) == " t5"
    assert tok.encode(tok.decode([5, 7, 300]), add_special_tokens=False) == [5, 7, 300]
    assert tok.encode("t5 hello")[0] == 1 and all(0 <= t < 512 for t in tok.encode("some words t99999"))
    ids = chat_token_ids(tok, [{"role": "user", "content": "hi t7"}])
    assert 7 in ids and all(0 <= t < 512 for t in ids)


def test_dummy_load_format_gets_the_dummy_tokenizer(tmp_path):
    from engine.tokenizer import load_tokenizer
    from shared.settings import Settings

    tok = load_tokenizer(Settings(load_format="dummy", hf_config="llama-3.1-8b"))
    assert isinstance(tok, DummyTokenizer) and len(tok) == 128256 and tok.decode([128255]) == " t128255"
    assert np.all(np.array(tok.encode("x y z")) < 128256)
