"""benchmarks.online_table: the side-by-side table built from two sides' `ferry bench --out` files."""
import json

from benchmarks.online_table import build_rows, format_table, load_side, main


def summary(ttft=(10.0, 20.0), tpot=(5.0, 6.0), out_tps=1000.0, total_tps=2000.0, failed=0) -> dict:
    return {"completed": 10, "failed": failed, "ttft_ms": {"p50": ttft[0], "p99": ttft[1]},
            "tpot_ms": {"p50": tpot[0], "p99": tpot[1]}, "output_throughput": out_tps,
            "total_token_throughput": total_tps}


def bench_file(path, *runs):
    path.write_text(json.dumps({"runs": [{"name": f"run {i}", "request_rate": rate, "summary": s}
                                         for i, (rate, s) in enumerate(runs)]}))


def side(folder, scale: float, tput: float, batch1_tpot=(4.0, 4.2)):
    folder.mkdir()
    bench_file(folder / "batch1.1.json", ("inf", summary(ttft=(30.0, 30.0), tpot=(batch1_tpot[0], 0))))
    bench_file(folder / "batch1.2.json", ("inf", summary(ttft=(33.0, 33.0), tpot=(batch1_tpot[1], 0))))
    bench_file(folder / "poisson.json", *[(r, summary(ttft=(20 * scale, 60 * scale), tpot=(5 * scale, 7 * scale)))
                                          for r in ("4", "16", "32")])
    bench_file(folder / "sharegpt1000.json", ("inf", summary(out_tps=8000 * tput, ttft=(900 * scale, 2000))))
    bench_file(folder / "long200.json", ("inf", summary(total_tps=34000 * tput, failed=1)))
    return str(folder)


def test_rows_ratios_and_verdicts(tmp_path):
    ferry = load_side(side(tmp_path / "ferry", scale=1.1, tput=1.1, batch1_tpot=(4.0, 4.1)), "ferry")
    vllm = load_side(side(tmp_path / "vllm", scale=1.0, tput=1.0, batch1_tpot=(4.9, 4.87)), "vllm")
    assert sorted(ferry) == ["batch1", "long200", "poisson", "sharegpt1000"] and len(ferry["batch1"]) == 2
    rows = {r.label: r for r in build_rows(ferry, vllm)}
    b1 = rows["batch 1 (5 in, 256 out): TPOT p50"]
    assert (b1.ferry, b1.vllm) == (4.0, 4.87) and b1.verdict == "ok"  # best of two runs; 0.82 <= 1/1.15
    assert rows["batch 1: TTFT p50"].ratio == 1.0 and rows["batch 1: TTFT p50"].verdict == "ok"
    p99 = rows["Poisson 16 req/s: TTFT p99"]
    assert abs(p99.ratio - 1.1) < 1e-9 and p99.verdict == "ok"  # within 1.2
    assert rows["Poisson 32 req/s: TPOT p50"].verdict == "MISS"  # 1.1 > 1.0
    sg = rows["sharegpt-synth 1000 at once: output tok/s"]
    assert abs(sg.ratio - 1.1) < 1e-9 and sg.verdict == "ok"
    long = rows["long prompts, 200 x (2000 in, 128 out) at once: total tok/s"]
    assert long.ferry is None and long.verdict == "no data"  # its only run had a failed request
    assert len(rows) == 2 + 12 + 3


def test_table_text_and_the_combined_file(tmp_path, capsys):
    f, v = side(tmp_path / "ferry", 0.9, 1.2), side(tmp_path / "vllm", 1.0, 1.0)
    text = format_table(load_side(f, "ferry"), load_side(v, "vllm"))
    assert "| Poisson 4 req/s: TTFT p50 | 18.00 ms | 20.00 ms | 0.90 | <= 1.00 | ok |" in text
    assert "| sharegpt-synth 1000 at once: output tok/s | 9,600 tok/s | 8,000 tok/s | 1.20 | >= 1.05 | ok |" in text
    assert "ferry: run 0: 1 failed" in text and "vLLM: run 0: 1 failed" in text
    both = tmp_path / "both.json"
    assert main([f, v, "--out", str(both)]) == 0
    assert capsys.readouterr().out.strip() == text
    again = format_table(load_side(str(both), "ferry"), load_side(str(both), "vllm"))
    assert again == text
