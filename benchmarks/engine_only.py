"""sharegpt-synth through the engine in one process (no HTTP, no sockets): the pipeline's ceiling.

    python3 -m benchmarks.engine_only [--num-requests 1000] [--hf-config llama-3.1-8b] [--quantization fp8]
Prints output tokens/s and the step mix, to tell engine time from the services' overhead."""
from __future__ import annotations

import argparse
import json
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-requests", type=int, default=1000)
    ap.add_argument("--hf-config", default="llama-3.1-8b")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--quantization", default="", help="awq | gptq | compressed-tensors | fp8 (dummy weights)")
    ap.add_argument("--out", default="")
    ap.add_argument("--sync", action="store_true",
                    help="one step at a time, each timed (default: overlapped steps, as the services run them)")
    args = ap.parse_args()
    import torch

    from engine.llm import LLM
    from services.bench.workload import fixed, sharegpt_synth
    from shared.codec import unpack_ids
    from shared.sampling_params import SamplingParams
    from shared.settings import Settings

    llm = LLM(Settings(load_format="dummy", hf_config=args.hf_config, dtype=args.dtype, device=args.device,
                       max_model_len=4096, max_num_seqs=args.max_num_seqs, quantization=args.quantization))
    vocab = llm.model_config.vocab_size
    warm = fixed(64, 300, 16, vocab, seed=1)
    llm.generate([r.prompt for r in warm], SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))
    reqs = sharegpt_synth(args.num_requests, vocab)
    for i, r in enumerate(reqs):
        llm.scheduler.add_request(f"b{i}", 0, r.prompt, SamplingParams(temperature=0.0, max_tokens=r.output_len,
                                                                         ignore_eos=True))
    steps = {"decode": [0, 0.0, 0], "mixed": [0, 0.0, 0]}  # count, seconds, sequences
    n_out = 0
    if args.device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    submit = llm.runner.submit

    def counted_submit(plan):
        nt = unpack_ids(plan.num_tokens)
        st = steps["decode" if len(nt) and int(nt.max()) == 1 else "mixed"]
        st[0] += 1
        st[2] += len(nt)
        return submit(plan)

    llm.runner.submit = counted_submit
    while not args.sync and llm.busy:  # overlapped steps are not timed one by one (seconds stay 0)
        n_out += sum(len(unpack_ids(o.token_ids)) for o in llm.step_overlapped())
    while args.sync and llm.scheduler.has_work():
        s = time.perf_counter()
        plan = llm.scheduler.schedule()
        if plan is None:
            continue
        nt = unpack_ids(plan.num_tokens)
        outs = llm.scheduler.update(llm.runner.execute(plan))
        kind = "decode" if len(nt) and int(nt.max()) == 1 else "mixed"
        st = steps[kind]
        st[0] += 1
        st[1] += time.perf_counter() - s
        st[2] += len(nt)
        n_out += sum(len(unpack_ids(o.token_ids)) for o in outs)
    wall = time.perf_counter() - t0
    res = {"requests": len(reqs), "wall_s": wall, "output_tokens": n_out, "output_tok_s": n_out / wall,
           "request_s": len(reqs) / wall,
           **{f"{k}_steps": v[0] for k, v in steps.items()}, **{f"{k}_s": v[1] for k, v in steps.items()},
           **{f"{k}_mean_batch": v[2] / max(1, v[0]) for k, v in steps.items()},
           **{f"{k}_ms_per_step": 1e3 * v[1] / max(1, v[0]) for k, v in steps.items()}}
    print(json.dumps(res), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(res, fh)


if __name__ == "__main__":
    main()
