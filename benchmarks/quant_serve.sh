#!/usr/bin/env bash
# Issue 18's serving figures in ONE device call on one H200: ferry serves the Llama-3.1-8B shape with dummy
# weights in bf16, FP8 (--quantization fp8: per-channel weights, per-token activations) and W4A16 (--quantization
# awq: group 128), then the Llama-3-70B shape in FP8; each driven by this tree's `ferry bench` through HTTP with the
# same requests. Per variant: a warm-up, batch 1 (5 in, 256 out) twice, and sharegpt-synth 1000 at once (not for
# W4A16, to fit the call). The log line with the KV pool's size is kept for each.
#
#   bash benchmarks/quant_serve.sh        # from the repository root on the GPU host, .gpu/wheels carried
#
# VARIANTS (default "8b:bf16 8b:fp8 8b:awq 70b:fp8"; a variant is SHAPE:QUANT[:kv8] — kv8 adds --kv-cache-dtype fp8),
# BUDGET (seconds, 570), SG_REQUESTS (1000), SG_AWQ (1: sharegpt-synth for 8b:awq too). A variant that no longer
# fits is skipped and said so. A dry run on a
# CPU (checks the script, times nothing): HF_8B / HF_70B a tiny config.json, DTYPE=float32, FERRY_ARGS="--device
# cpu", SG_REQUESTS small, and a stand-in nvidia-smi on PATH that prints 0.
set -u
T0=$(date +%s)
BUDGET=${BUDGET:-570}
SG_REQUESTS=${SG_REQUESTS:-1000}
VARIANTS=${VARIANTS:-"8b:bf16 8b:fp8 8b:awq 70b:fp8"}
OUT=${OUT:-/tmp/ferry-quant}; mkdir -p "$OUT"
R=/tmp/ferry-quant-runs; rm -rf $R; mkdir -p $R
if ls .gpu/wheels/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl || exit 1
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
PORT=8000; URL=http://127.0.0.1:$PORT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $R/gpu.txt
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
bench() { PYTHONPATH=/tmp/site:$PWD timeout $(( $(left) > 10 ? $(left) - 5 : 5 )) python3 -m services.cli bench \
  --url $URL --no-progress --hf-config "$hf" "$@"; }

for v in $VARIANTS; do
  IFS=: read -r shape quant kv <<< "$v"
  name="$shape-$quant${kv:+-$kv}"
  need=$([ "$shape" = 70b ] && echo 150 || echo 75)
  [ "$(left)" -lt "$need" ] && { echo "SKIPPED $name: $(left) s left, needs ~$need s"; continue; }
  hf=$([ "$shape" = 70b ] && echo "${HF_70B:-llama-3-70b}" || echo "${HF_8B:-llama-3.1-8b}")
  args=(--load-format dummy --hf-config "$hf" --dtype "${DTYPE:-bfloat16}" --max-model-len 4096 --max-num-seqs 1024
        --port $PORT ${FERRY_ARGS:-})
  [ "$quant" != bf16 ] && args+=(--quantization "$quant")
  [ "$kv" = kv8 ] && args+=(--kv-cache-dtype fp8)
  PYTHONPATH=/tmp/site:$PWD setsid python3 -m services.cli serve "${args[@]}" > "$R/$name.log" 2>&1 &
  server=$!
  ok=0
  for _ in $(seq 300); do
    python3 -c "import urllib.request as u; u.urlopen('$URL/health', timeout=1)" 2>/dev/null && { ok=1; break; }
    kill -0 $server 2>/dev/null || break
    [ "$(left)" -lt 20 ] && break
    sleep 1
  done
  if [ $ok = 1 ]; then
    echo "$name: healthy after $(( $(date +%s) - T0 )) s; $(grep -o 'KV cache: [0-9]* blocks[^)]*)' "$R/$name.log")"
    grep -o 'KV cache: [0-9]* blocks' "$R/$name.log" | grep -o '[0-9]*' | head -1 > "$R/$name.blocks"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1 > "$R/$name.mem"
    bench --num-requests 200 --name warmup > /dev/null 2>&1
    bench --workload fixed --num-requests 1 --input-len 5 --output-len 256 --name "batch-1 $name" --out "$R/b1a_$name.json" | grep -E '^(==|TPOT)'
    bench --workload fixed --num-requests 1 --input-len 5 --output-len 256 --name "batch-1 $name" --out "$R/b1b_$name.json" --prompt-seed 1 | grep -E '^(==|TPOT)'
    if [ "$quant" != awq ] || [ "$shape" = 70b ] || [ "${SG_AWQ:-0}" = 1 ]; then
      bench --num-requests "$SG_REQUESTS" --name "sharegpt $name" --prompt-seed 200 --out "$R/sg_$name.json" | grep -E '^(==|requests|TTFT)'
    fi
  else
    echo "$name: did not become healthy"; tail -25 "$R/$name.log"
  fi
  kill -TERM -- -$server 2>/dev/null
  for _ in $(seq 30); do kill -0 $server 2>/dev/null || break; sleep 1; done
  kill -KILL -- -$server 2>/dev/null; wait $server 2>/dev/null
  tail -40 "$R/$name.log" > "$OUT/$name.log"
  for _ in $(seq 30); do
    used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
    [ "${used:-0}" -lt 2000 ] && break; sleep 1
  done
done

python3 - $R <<'PY'
import glob, json, os, sys
runs = sys.argv[1]
rows = {}
for path in sorted(glob.glob(os.path.join(runs, "*.json"))):
    for r in json.load(open(path)).get("runs", []):
        kind, name = r["name"].split(" ", 1)
        row = rows.setdefault(name, {})
        s = r["summary"]
        if kind == "batch-1":
            row["tpot"] = min(row.get("tpot", 1e9), s["tpot_ms"]["p50"])
        else:
            row["sg"], row["sg_ttft"], row["sg_done"] = s["output_throughput"], s["ttft_ms"]["p50"], s["completed"]
for name in rows:
    for ext in ("blocks", "mem"):
        p = os.path.join(runs, f"{name}.{ext}")
        if os.path.exists(p):
            rows[name][ext] = open(p).read().strip()
print("\n" + open(os.path.join(runs, "gpu.txt")).read().strip())
base = rows.get("8b-bf16", {})
print(f"{'variant':16s} {'KV blocks':>10s} {'GPU MiB':>8s} {'b1 TPOT ms':>10s} {'speed-up':>8s} {'sg tok/s':>9s} "
      f"{'x bf16':>7s} {'sg TTFT p50':>11s}")
for name, r in rows.items():
    up = base.get("tpot", float("nan")) / r["tpot"] if r.get("tpot") else float("nan")
    sgx = r["sg"] / base["sg"] if "sg" in r and base.get("sg") else float("nan")
    print(f"{name:16s} {r.get('blocks', '-'):>10s} {r.get('mem', '-'):>8s} {r.get('tpot', float('nan')):10.3f} "
          f"{up:8.2f} {r.get('sg', float('nan')):9.0f} {sgx:7.2f} {r.get('sg_ttft', float('nan')):11.0f}"
          + (f"  ({r['sg_done']} completed)" if "sg_done" in r else ""))
json.dump(rows, open(os.path.join(os.environ.get("OUT", "/tmp/ferry-quant"), "quant.json"), "w"), indent=1)
PY
echo "total $(( $(date +%s) - T0 )) s"
