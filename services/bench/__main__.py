"""ferry bench: load a running ferry with a workload and report throughput and latency.

    ferry bench [--url http://127.0.0.1:8000] [--workload sharegpt-synth|fixed] [--num-requests 1000]
                [--dataset sharegpt FILE [--tokenizer MODEL]] [--request-rate inf|R[,R...]]
                [--max-concurrency N[,N...]] [--slo-ttft-ms MS] [--slo-tpot-ms MS]
                [--input-len 5 --output-len 256] [--out results.json]
    ferry bench --hf-baseline --hf-config llama-3.1-8b [--num-requests 128 --hf-batch-size 64]

All requests go at once by default; --request-rate R sends them with Poisson arrivals at R/s, and
--max-concurrency N keeps at most N open (closed loop). Comma lists sweep: one run for each rate and
bound, in one call, and --out plots latency against load. Prompts are token ids, sent to
/v1/completions with ignore_eos and streaming, so every request returns exactly its output length and
TTFT and gaps can be timed. Run i of a sweep draws its synthetic prompts with --prompt-seed + i (and
shuffles a ShareGPT file with --seed + i), so runs do not hit each other in the prefix cache.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="ferry bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--workload", default="sharegpt-synth", choices=("sharegpt-synth", "fixed"))
    ap.add_argument("--num-requests", type=int, default=1000)
    ap.add_argument("--dataset", nargs=2, metavar=("sharegpt", "FILE"), default=None,
                    help="a ShareGPT JSON file, sampled as vLLM's bench does (instead of --workload)")
    ap.add_argument("--tokenizer", default="", help="with --dataset: the served model (a directory, a .gguf, the "
                    "default model's name) whose tokenizer counts and encodes the prompts; default: the dummy "
                    "tokenizer of --hf-config, as `ferry serve --load-format dummy` serves")
    ap.add_argument("--sharegpt-output-len", type=int, default=0, help="every request's output tokens (0: the "
                    "reply's length)")
    ap.add_argument("--request-rate", default="inf", help="requests/s of Poisson arrivals; inf: all at once; "
                    "a comma list sweeps")
    ap.add_argument("--max-concurrency", default="0", help="at most this many requests open at once (0: no "
                    "bound); a comma list sweeps")
    ap.add_argument("--slo-ttft-ms", type=float, default=0.0, help="goodput: requests/s with TTFT within this")
    ap.add_argument("--slo-tpot-ms", type=float, default=0.0, help="goodput: requests/s with TPOT within this")
    ap.add_argument("--prompt-seed", type=int, default=0, help="synthetic prompts' ids (lengths stay); 0: the "
                    "workload's own")
    ap.add_argument("--input-len", type=int, default=5, help="fixed workload: prompt tokens")
    ap.add_argument("--output-len", type=int, default=256, help="fixed workload: output tokens")
    ap.add_argument("--vocab-size", type=int, default=0, help="prompt ids are drawn below this (default: the "
                    "--hf-config's vocabulary, else 128256); ids must be valid for the served model")
    ap.add_argument("--seed", type=int, default=0, help="arrival times' seed")
    ap.add_argument("--name", default="", help="a label for the run in the JSON and the plot")
    ap.add_argument("--out", default="", help="write the results as JSON here (and a PNG beside it)")
    ap.add_argument("--plot", default="", help="the PNG's path (default: --out with .png)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--hf-baseline", action="store_true", help="run transformers generate in this process instead")
    ap.add_argument("--hf-config", default="llama-3.1-8b", help="with --hf-baseline (and for --vocab-size)")
    ap.add_argument("--hf-batch-size", type=int, default=64)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    if args.dataset is not None and args.dataset[0] != "sharegpt":
        ap.error(f"--dataset {args.dataset[0]!r}: only sharegpt is supported")
    try:
        args.rates = [float(r) for r in args.request_rate.split(",")]
        args.concurrencies = [int(c) for c in args.max_concurrency.split(",")]
    except ValueError as e:
        ap.error(f"--request-rate and --max-concurrency take numbers or comma lists of them: {e}")
    if any(c < 0 for c in args.concurrencies) or any(r < 0 for r in args.rates):
        ap.error("--request-rate and --max-concurrency must not be negative")
    return args


def vocab_size(args) -> int:
    if args.vocab_size:
        return args.vocab_size
    from engine.model_config import NAMED_SHAPES

    if args.hf_config in NAMED_SHAPES:
        return NAMED_SHAPES[args.hf_config]["vocab_size"]
    with open(args.hf_config) as fh:
        return json.load(fh)["vocab_size"]


def workload_name(args) -> str:
    return "sharegpt " + args.dataset[1].rsplit("/", 1)[-1] if args.dataset else args.workload


def make_requests(args, run: int = 0, tokenizer=None):
    """The requests of run `run` of a sweep (see the module's doc for what changes between runs)."""
    from services.bench.workload import fixed, sharegpt_synth

    if args.dataset:
        from services.bench.sharegpt import load_bench_tokenizer, sharegpt_requests

        tokenizer = tokenizer or load_bench_tokenizer(args.tokenizer, args.hf_config)
        return sharegpt_requests(args.dataset[1], args.num_requests, tokenizer, args.seed + run,
                                 args.sharegpt_output_len)
    vocab = vocab_size(args)
    if args.workload == "sharegpt-synth":
        return sharegpt_synth(args.num_requests, vocab, args.prompt_seed + run if args.prompt_seed or run else 0)
    return fixed(args.num_requests, args.input_len, args.output_len, vocab, seed=args.prompt_seed + run)


def sweep(args) -> list[tuple[float, int]]:
    """(rate, max concurrency) of every run, in order."""
    return [(rate, conc) for conc in args.concurrencies for rate in args.rates]


def _progress(args, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="req", disable=args.no_progress, file=sys.stderr, dynamic_ncols=True)


def run_server_bench(args) -> tuple[list[dict], list]:
    from services.bench.client import run_load
    from services.bench.stats import format_summary, summarize
    from services.bench.workload import poisson_arrivals

    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    runs, all_records = [], []
    plan = sweep(args)
    tokenizer = None
    if args.dataset:
        from services.bench.sharegpt import load_bench_tokenizer

        tokenizer = load_bench_tokenizer(args.tokenizer, args.hf_config)
    for i, (rate, conc) in enumerate(plan):
        requests = make_requests(args, i, tokenizer)
        times = poisson_arrivals(len(requests), rate, args.seed)
        label = "at once" if math.isinf(rate) or rate <= 0 else f"{rate:g} req/s"
        if conc:
            label += f", at most {conc} open"
        name = f"{args.name or workload_name(args)} {len(requests)} {label}"
        if args.name and len(plan) == 1:
            name = args.name
        with _progress(args, len(requests), name) as bar:
            records, duration, model = asyncio.run(run_load(args.url, requests, times, bar, max_concurrency=conc))
        summary = summarize(records, duration, args.slo_ttft_ms, args.slo_tpot_ms)
        print(format_summary(name, summary), flush=True)
        runs.append({"name": name, "model": model, "url": args.url, "workload": workload_name(args),
                     "num_requests": len(requests), "request_rate": f"{rate:g}", "max_concurrency": conc,
                     "summary": summary})
        all_records.append(records)
    return runs, all_records


def run_hf(args) -> tuple[list[dict], list]:
    from services.bench.hf_baseline import run_hf_baseline
    from services.bench.stats import summarize

    requests = make_requests(args)
    name = args.name or f"hf-baseline {workload_name(args)} {len(requests)} batch {args.hf_batch_size}"

    def result(records, duration):
        s = summarize(records, duration)
        for k in ("ttft_ms", "tpot_ms", "itl_ms"):
            s.pop(k)  # static batches stream nothing: only throughput and batch latency mean anything
        return {"name": name, "workload": args.workload, "num_requests": len(requests), "hf_config": args.hf_config,
                "hf_batch_size": args.hf_batch_size, "batches_done": len(records) // args.hf_batch_size
                + bool(len(records) % args.hf_batch_size), "summary": s}

    def save_partial(records, duration):
        if args.out:
            _write(args.out, {"runs": [result(records, duration)], "partial": len(records) < len(requests)})

    with _progress(args, len(requests), name) as bar:
        records, duration = run_hf_baseline(requests, args.hf_config, args.dtype, args.device, args.hf_batch_size,
                                            bar, save_partial)
    run = result(records, duration)
    s = run["summary"]
    print(f"== {name}: {s['completed']} requests in {s['duration_s']:.2f} s\nrequests/s {s['request_throughput']:.3f}"
          f"   output tok/s {s['output_throughput']:.1f}   total tok/s {s['total_token_throughput']:.1f}", flush=True)
    return [run], [records]


def _write(path: str, doc: dict):
    with open(path, "w") as fh:
        json.dump(doc, fh, indent=1)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.time()
    runs, records = run_hf(args) if args.hf_baseline else run_server_bench(args)
    if args.out:
        from services.bench.stats import records_to_dicts

        _write(args.out, {"started": started, "argv": sys.argv[1:] if argv is None else argv, "runs": runs,
                          "requests": [records_to_dicts(r) for r in records]})
        print(f"wrote {args.out}")
        if not args.hf_baseline:
            from services.bench.plot import plot_latency_vs_load

            png = args.plot or (args.out.rsplit(".", 1)[0] + ".png")
            if plot_latency_vs_load(runs, records, png):
                print(f"wrote {png}")
            else:
                print("matplotlib is not installed: no latency plot (pip install matplotlib)")
    return 0 if all(r["summary"]["failed"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
