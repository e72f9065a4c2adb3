#!/usr/bin/env bash
# The full HTTP pipeline on one GPU with the Llama-3.1-8B shape (dummy bf16 weights), in one device call:
#   sharegpt-synth 1000 at once; batch-1 decode (5 in, 256 out); Poisson 16 req/s; batch 64 with the GPU's
#   busy share sampled by nvidia-smi; then the server stops and transformers generate runs the first
#   HF_REQUESTS sharegpt-synth requests in static batches of 64 (as far as the time left allows).
# Run from the repository root with .gpu/wheels carried (pyzmq, gguf): bash benchmarks/gpu_run.sh
# Results: $OUT/*.json, the server log, and a table printed last.
set -u
T0=$(date +%s)
BUDGET=${BUDGET:-560}  # seconds for the whole script (the device call's limit is a little more)
HF_REQUESTS=${HF_REQUESTS:-128}
POISSON_REQUESTS=${POISSON_REQUESTS:-300}
OUT=${OUT:-/tmp/ferry-bench}; mkdir -p "$OUT"
R=/tmp/ferry-bench-runs; rm -rf $R; mkdir -p $R  # per-run JSON here; $OUT gets one results.json (8 files come back at most)
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
PORT=8000; URL=http://127.0.0.1:$PORT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $R/gpu.txt

# the batch-1 floor: weight bytes / measured copy bandwidth (read + written)
python3 - <<'PY' > $R/floor.json
import json, torch
from engine.model_config import NAMED_SHAPES
c = NAMED_SHAPES["llama-3.1-8b"]
h, i, L, v, kv = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"], c["num_key_value_heads"]
d = h // c["num_attention_heads"]
params = 2 * v * h + h + L * (2 * h * h + 2 * h * kv * d + 3 * h * i + 2 * h)
src = torch.randn(2**28, device="cuda"); dst = torch.empty_like(src); ts = []
for _ in range(25):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record(); dst.copy_(src); b.record(); b.synchronize(); ts.append(a.elapsed_time(b) / 1e3)
bw = 2 * 2**30 / sorted(ts[5:])[len(ts[5:]) // 2]
print(json.dumps({"copy_bandwidth_TBps": bw / 1e12, "weight_GB": params * 2 / 1e9, "floor_tok_s": bw / (params * 2)}))
PY
cat $R/floor.json

python3 -m services.cli serve --load-format dummy --hf-config llama-3.1-8b --dtype bfloat16 --max-model-len 4096 \
    --max-num-seqs ${MAX_NUM_SEQS:-1024} --port $PORT > "$OUT/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 300); do
  python3 -c "import urllib.request as u; u.urlopen('$URL/health', timeout=1)" 2>/dev/null && break
  kill -0 $SERVER 2>/dev/null || { echo "server died"; tail -40 "$OUT/server.log"; exit 1; }
  sleep 1
done
echo "server healthy after $(( $(date +%s) - T0 )) s"
diagnose() {  # a bench run that outlived its limit: engine state and every service's stacks into the log
  echo "a bench run timed out; engine metrics and stacks follow (server.log)"
  python3 -c "import urllib.request as u; print(u.urlopen('$URL/metrics', timeout=5).read().decode())" \
      | grep -E "^ferry_(scheduler_stat|num_requests)" | tee -a "$OUT/server.log"
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv | tee -a "$OUT/server.log"
  pkill -USR1 -f "services\.(runner|scheduler|detokenizer|tokenizer)"; sleep 2
  tail -150 "$OUT/server.log"; kill -TERM $SERVER; exit 1
}
B0="python3 -m services.cli bench --url $URL --no-progress"
B() { timeout ${RUN_LIMIT:-150} $B0 "$@" || { [ $? -eq 124 ] && diagnose; }; }
B --workload fixed --num-requests 64 --input-len 300 --output-len 16 --name warmup > /dev/null  # Triton JIT, allocator
B --num-requests 1000 --out $R/sharegpt_1000.json --plot "$OUT/latency_sharegpt_1000.png"
B --workload fixed --num-requests 1 --input-len 5 --output-len 256 --name batch-1 --out $R/batch1.json
B --workload fixed --num-requests 1 --input-len 5 --output-len 256 --name batch-1-again --out $R/batch1b.json
nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 100 > /tmp/util.txt &
SMI=$!
B --workload fixed --num-requests 64 --input-len 5 --output-len 512 --name batch-64 --out $R/batch64.json
kill $SMI
python3 - <<'PY' > $R/util64.json
import json
u = [int(x) for x in open("/tmp/util.txt").read().split() if x.strip().isdigit()]
busy = u[10:-5] or u  # drop the ramp at both ends (prefill, the tail)
print(json.dumps({"samples": len(u), "mean_util_pct": sum(busy) / max(1, len(busy)), "min": min(busy, default=0)}))
PY
B --num-requests $POISSON_REQUESTS --request-rate 16 --out $R/poisson16.json --plot "$OUT/latency_poisson16.png"
kill -TERM $SERVER; wait $SERVER
left=$(( BUDGET - ($(date +%s) - T0) - 15 ))
echo "server stopped; $left s left for the transformers baseline"
if [ $left -gt 90 ]; then
  timeout $left python3 -m services.cli bench --hf-baseline --hf-config llama-3.1-8b --dtype bfloat16 --device cuda \
      --num-requests $HF_REQUESTS --hf-batch-size 64 --no-progress --out $R/hf_baseline.json
fi

python3 - $R "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        with open(os.path.join(out, name)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None
gpu = open(os.path.join(out, "gpu.txt")).read().strip()
floor = load("floor.json") or {}
print(f"\n{gpu}; copy {floor.get('copy_bandwidth_TBps', 0):.2f} TB/s, weights {floor.get('weight_GB', 0):.2f} GB, "
      f"batch-1 floor {floor.get('floor_tok_s', 0):.1f} tok/s")
print(f"{'run':34s} {'ok':>5s} {'req/s':>7s} {'out tok/s':>9s} {'tot tok/s':>9s} {'TTFT p50/p99 ms':>17s} "
      f"{'TPOT p50/p99 ms':>16s} {'ITL p50/p99 ms':>15s}")
for f in ("sharegpt_1000.json", "batch1.json", "batch1b.json", "batch64.json", "poisson16.json", "hf_baseline.json"):
    doc = load(f)
    for r in (doc or {}).get("runs", []):
        s = r["summary"]
        lat = lambda k: f"{s[k]['p50']:.1f}/{s[k]['p99']:.1f}" if k in s else "-"
        print(f"{r['name'][:34]:34s} {s['completed']:5d} {s['request_throughput']:7.2f} {s['output_throughput']:9.1f} "
              f"{s['total_token_throughput']:9.1f} {lat('ttft_ms'):>17s} {lat('tpot_ms'):>16s} {lat('itl_ms'):>15s}"
              + (" (partial)" if doc.get("partial") else ""))
print("batch-64 GPU utilization (nvidia-smi):", load("util64.json"))
names = ("floor", "util64", "sharegpt_1000", "batch1", "batch1b", "batch64", "poisson16", "hf_baseline")
with open(os.path.join(sys.argv[2], "results.json"), "w") as fh:
    json.dump({"gpu": gpu, **{n: load(n + ".json") for n in names}}, fh)
PY
echo "GPU idle between steps, per run of steps (runner log; the batch-64 run is the one of ~512 steps):"
grep "GPU run of" "$OUT/server.log" | sed 's/.*ferry.runner.0: //'
echo "total $(( $(date +%s) - T0 )) s"
