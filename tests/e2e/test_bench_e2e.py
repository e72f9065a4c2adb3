"""`ferry bench` against a real `ferry serve --load-format dummy` on the CPU: a tiny random Llama, whose
tokenizer is the dummy one (any id decodes): 20 sharegpt-synth requests all at once, token-id prompts; then a
ShareGPT file, at most 2 requests open, a sweep of two rates with goodput."""
from __future__ import annotations

import json
import subprocess

import pytest
from _pipeline import Server, base_env, ferry_command, free_port

TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 1,
              "eos_token_id": 2, "tie_word_embeddings": False}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    config = tmp / "config.json"
    config.write_text(json.dumps(TINY_LLAMA))
    port = free_port()
    server = Server(ferry_command() + ["serve", "--load-format", "dummy", "--hf-config", str(config), "--device", "cpu",
                                       "--port", str(port), "--run-dir", str(tmp / "run"), "--max-num-seqs", "32"],
                    port, str(tmp / "ferry.log"))
    try:
        server.wait_ready(timeout=60)
        yield server, config
    finally:
        server.stop()


def bench(server, *argv) -> subprocess.CompletedProcess:
    done = subprocess.run(ferry_command() + ["bench", "--url", server.url, "--no-progress", *argv],
                          env=base_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr + server.logs()[-3000:]
    return done


def test_bench_against_dummy_server(served, tmp_path):
    server, config = served
    out = tmp_path / "results.json"
    done = bench(server, "--num-requests", "20", "--hf-config", str(config), "--out", str(out))
    assert "output tok/s" in done.stdout and "TPOT" in done.stdout
    doc = json.loads(out.read_text())
    s = doc["runs"][0]["summary"]
    from services.bench.workload import sharegpt_synth

    reqs = sharegpt_synth(20, 512)
    assert s["completed"] == 20 and s["failed"] == 0
    assert s["input_tokens"] == sum(len(r.prompt) for r in reqs)
    assert s["output_tokens"] == sum(r.output_len for r in reqs)  # ignore_eos: every token asked for
    assert s["ttft_ms"]["p50"] > 0 and s["tpot_ms"]["p50"] > 0 and s["itl_ms"]["p99"] > 0
    assert len(doc["requests"][0]) == 20  # per run, per request


def test_sharegpt_file_closed_loop_sweep_with_goodput(served, tmp_path):
    server, config = served
    # 4 conversations pass vLLM's filters (the dummy tokenizer: a word is a token, plus BOS);
    # 6 requests are asked for, so 2 are drawn again from those 4
    turns = lambda p, r: {"conversations": [{"from": "human", "value": " ".join(["t9"] * p)},  # noqa: E731
                                            {"from": "gpt", "value": " ".join(["t8"] * r)}]}
    keep = [(5, 7), (12, 5), (30, 11), (8, 9)]
    data = [turns(p, r) for p, r in keep] + [turns(2, 9), turns(9, 2), {"conversations": []}]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "sweep.json"
    done = bench(server, "--dataset", "sharegpt", str(path), "--hf-config", str(config), "--num-requests", "6",
                 "--max-concurrency", "2", "--request-rate", "50,inf", "--slo-ttft-ms", "60000",
                 "--slo-tpot-ms", "60000", "--out", str(out))
    assert "goodput" in done.stdout
    runs = json.loads(out.read_text())["runs"]
    assert [(r["request_rate"], r["max_concurrency"]) for r in runs] == [("50", 2), ("inf", 2)]
    for run in runs:
        s = run["summary"]
        assert s["completed"] == 6 and s["failed"] == 0 and 1 <= s["max_concurrency"] <= 2
        assert s["goodput"]["good_requests"] == 6  # bounds no CPU run misses
        assert s["output_tokens"] >= 6 * 5 and s["input_tokens"] >= 6 * 6
    # run 0's requests are the kept conversations (and repeats), counted as vLLM counts: BOS in prompt and reply
    req0 = json.loads(out.read_text())["requests"][0]
    assert {(r["prompt_len"], r["output_len"]) for r in req0} == {(p + 1, r + 1) for p, r in keep}
