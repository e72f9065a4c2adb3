"""`ferry bench` against a real `ferry serve --load-format dummy` on the CPU: a tiny random Llama, whose
tokenizer is the dummy one (any id decodes), 20 sharegpt-synth requests all at once, token-id prompts."""
from __future__ import annotations

import json
import subprocess

from _pipeline import Server, base_env, ferry_command, free_port

TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 1,
              "eos_token_id": 2, "tie_word_embeddings": False}


def test_bench_against_dummy_server(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY_LLAMA))
    port = free_port()
    server = Server(ferry_command() + ["serve", "--load-format", "dummy", "--hf-config", str(config), "--device", "cpu",
                                       "--port", str(port), "--run-dir", str(tmp_path / "run"), "--max-num-seqs", "32"],
                    port, str(tmp_path / "ferry.log"))
    try:
        server.wait_ready(timeout=60)
        out = tmp_path / "results.json"
        bench = subprocess.run(ferry_command() + ["bench", "--url", server.url, "--num-requests", "20",
                                                  "--hf-config", str(config), "--out", str(out), "--no-progress"],
                               env=base_env(), capture_output=True, text=True, timeout=120)
        assert bench.returncode == 0, bench.stdout + bench.stderr + server.logs()[-3000:]
        assert "output tok/s" in bench.stdout and "TPOT" in bench.stdout
        doc = json.loads(out.read_text())
        s = doc["runs"][0]["summary"]
        from services.bench.workload import sharegpt_synth

        reqs = sharegpt_synth(20, 512)
        assert s["completed"] == 20 and s["failed"] == 0
        assert s["input_tokens"] == sum(len(r.prompt) for r in reqs)
        assert s["output_tokens"] == sum(r.output_len for r in reqs)  # ignore_eos: every token asked for
        assert s["ttft_ms"]["p50"] > 0 and s["tpot_ms"]["p50"] > 0 and s["itl_ms"]["p99"] > 0
        assert len(doc["requests"][0]) == 20  # per run, per request
    finally:
        server.stop()
