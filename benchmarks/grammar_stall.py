"""What a new large JSON schema costs the requests already running, with the grammar gate and without it:

    python3 -m benchmarks.grammar_stall [--device cpu] [--fields 40]

The default model decodes `--streams` plain requests; then a request with a JSON schema of `--fields` nested objects
(about 30 kB at 40: xgrammar takes around a second to compile it) arrives. Prints the median step before it arrives,
the longest and the median step until its first token, and how many steps that took, with engine/grammar_gate.py as
it is (the compile on the runner's thread while the others decode) and with the gate opened (the compile inside the
step, as before the gate). Each case uses a schema of its own, so neither finds the other's compiled grammar."""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def schema(fields: int, salt: str) -> str:
    field = {"type": ["string", "integer", "array"], "items": {"type": "number"}}
    props = {f"{salt}_{i}": {"type": "object", "required": [f"s{j}" for j in range(8)],
                             "properties": {f"s{j}": field for j in range(8)}}
             for i in range(fields)}
    return json.dumps({"type": "object", "properties": props, "required": list(props)})


def run(llm, spec: str, streams: int, gate_open: bool) -> dict:
    from shared.sampling_params import SamplingParams

    sched = llm.scheduler
    gate = sched.grammar_gate
    gate.must_wait = (lambda key, busy: False) if gate_open else type(gate).must_wait.__get__(gate)
    for i in range(streams):
        sched.add_request(f"plain-{gate_open}-{i}", 0, [1, 2, 3, 4, 5 + i], SamplingParams(max_tokens=400,
                                                                                           ignore_eos=True))
    before = []
    for _ in range(6):
        t = time.perf_counter()
        llm.step()
        before.append((time.perf_counter() - t) * 1e3)
    sched.add_request(f"schema-{gate_open}", 0, [1, 2, 3, 9],
                      SamplingParams(max_tokens=4, grammar_kind="json_schema", grammar_spec=spec))
    times, first = [], None
    req = sched.requests[f"schema-{gate_open}"]
    for n in range(2000):
        t = time.perf_counter()
        llm.step()
        times.append((time.perf_counter() - t) * 1e3)
        if first is None and req.seqs[0].num_output_tokens > 0:
            first = n + 1
            break
    for rid in list(sched.requests):
        sched.abort_request(rid)
    while sched.has_work():
        llm.step()
    return dict(longest_ms=max(times), median_ms=float(np.median(times)), steps_to_first_token=first,
                before_ms=float(np.median(before[1:])))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fields", type=int, default=40)
    ap.add_argument("--streams", type=int, default=4)
    args = ap.parse_args()
    from engine.llm import LLM
    from shared.settings import Settings

    llm = LLM(Settings(device=args.device, max_num_seqs=16))
    rows = {}
    # warm: xgrammar's import and the tokenizer load happen once, at the first grammar
    run(llm, schema(2, "warm"), args.streams, gate_open=True)
    for gate_open in (False, True):
        spec = schema(args.fields, "open" if gate_open else "gated")
        rows["gate opened (compile in the step)" if gate_open else "gate (compile on the thread)"] = \
            run(llm, spec, args.streams, gate_open)
    print(f"\nschema of {args.fields} fields ({len(schema(args.fields, 'x'))} chars), {args.streams} plain streams "
          f"decoding beside it, device {args.device}")
    print("| case | step ms before it | longest step ms | median step ms | steps to its first token |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        print(f"| {name} | {r['before_ms']:.1f} | {r['longest_ms']:.0f} | {r['median_ms']:.1f} | "
              f"{r['steps_to_first_token']} |")


if __name__ == "__main__":
    main()
