#!/usr/bin/env bash
# Tensor parallelism through the full HTTP pipeline on a host with two GPUs, dummy bf16 weights, in one call:
#   Llama-3.1-8B shape with TP=2: sharegpt-synth 1000 at once, batch-1 decode (5 in, 256 out);
#   the same batch-1 with TP=1 (the ratio the issue asks for);
#   Llama-3-70B shape with TP=2: sharegpt-synth 1000 at once and batch-1 decode, as far as the time allows.
# Run from the repository root with .gpu/wheels carried (pyzmq): bash benchmarks/gpu_tp_run.sh
set -u
T0=$(date +%s)
BUDGET=${BUDGET:-440}
OUT=${OUT:-/tmp/ferry-tp-out}; mkdir -p "$OUT"
R=/tmp/ferry-tp; rm -rf $R; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # required on this host
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
URL=http://127.0.0.1:8000
B="python3 -m services.cli bench --url $URL --no-progress"
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }

serve() {  # NAME ARGS...: start the whole pipeline and wait until /health answers 200
  local name=$1; shift
  python3 -m services.cli serve --load-format dummy --dtype bfloat16 --max-model-len 4096 --max-num-seqs ${MAX_NUM_SEQS:-512} \
      --port 8000 "$@" > $R/server-$name.log 2>&1 &
  SERVER=$!
  local t=$(date +%s)
  for _ in $(seq 300); do
    python3 -c "import urllib.request as u; u.urlopen('$URL/health', timeout=1)" 2>/dev/null \
      && { echo "== $name healthy after $(( $(date +%s) - t )) s"; return 0; }
    kill -0 $SERVER 2>/dev/null || break
    sleep 1
  done
  echo "== $name did not become healthy"; tail -30 $R/server-$name.log; return 1
}
stop() { kill -INT $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; sleep 3; }
run() {  # NAME ARGS...: one bench run, bounded by the time left
  local name=$1; shift
  [ "$(left)" -gt 20 ] || { echo "== $name skipped: out of time"; return; }
  timeout $(( $(left) - 10 )) $B --name $name --out $R/$name.json "$@"
}

# BATCH1_ONLY=1: only the batch-1 runs, BATCH1_RUNS (default 2) of each, for the TP=2 / TP=1 ratio.
N1=${BATCH1_RUNS:-2}
if serve tp2-8b --hf-config llama-3.1-8b --tensor-parallel-size 2; then
  run warmup-tp2 --workload fixed --num-requests 64 --input-len 300 --output-len 16 > /dev/null
  [ -n "${BATCH1_ONLY:-}" ] || run tp2-8b-sharegpt --num-requests 1000
  for i in $(seq $N1); do run tp2-8b-batch1-$i --workload fixed --num-requests 1 --input-len 5 --output-len 256; done
  stop
fi
if serve tp1-8b --hf-config llama-3.1-8b; then
  run warmup-tp1 --workload fixed --num-requests 1 --input-len 5 --output-len 16 > /dev/null
  for i in $(seq $N1); do run tp1-8b-batch1-$i --workload fixed --num-requests 1 --input-len 5 --output-len 256; done
  stop
fi
if [ -z "${BATCH1_ONLY:-}" ] && [ "$(left)" -gt 120 ] && serve tp2-70b --hf-config llama-3-70b --tensor-parallel-size 2; then
  run warmup-70b --workload fixed --num-requests 64 --input-len 300 --output-len 16 > /dev/null
  run tp2-70b-batch1 --workload fixed --num-requests 1 --input-len 5 --output-len 256
  run tp2-70b-sharegpt --num-requests 1000
  stop
fi
cp $R/tp*.json "$OUT"/ 2>/dev/null
python3 - "$R" <<'EOF'
import glob, json, os, sys
rows = {}
for f in sorted(glob.glob(os.path.join(sys.argv[1], "tp*.json"))):
    s = json.load(open(f))["runs"][-1]["summary"]
    rows[os.path.basename(f)[:-5]] = s
    print(f"{os.path.basename(f)[:-5]:22} output tok/s {s['output_throughput']:9.1f}  TPOT p50 {s['tpot_ms']['p50']:7.2f} ms")
tp = {n: [v["tpot_ms"]["mean"] for k, v in rows.items() if k.startswith(f"tp{n}-8b-batch1")] for n in (1, 2)}
if tp[1] and tp[2]:
    m1, m2 = sum(tp[1]) / len(tp[1]), sum(tp[2]) / len(tp[2])
    print(f"8B batch-1 TPOT mean TP=1 {m1:.3f} ms, TP=2 {m2:.3f} ms: TP=2 / TP=1 = {m2 / m1:.3f}")
EOF
echo "total $(( $(date +%s) - T0 )) s"
