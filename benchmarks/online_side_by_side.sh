#!/usr/bin/env bash
# Issue 17's side-by-side, in ONE device call on one H200: ferry, then vLLM 0.26.0, each serving the Llama-3.1-8B
# shape (dummy bf16 weights, max-num-seqs 1024, max model length 4096), each driven by this tree's `ferry bench`
# through HTTP with the same requests, then one table of both with the ratios (ferry / vLLM) and the must-holds.
#
# Workloads, per server, in this order (sizes chosen to fit 10 minutes of wall time with both servers' start-up):
#   warm-up     64 x (300 in, 16 out) and 200 sharegpt-synth at once (JIT, allocator, graphs; not reported)
#   batch1      1 request of 5 in, 256 out, twice (the table takes the better run)
#   poisson     sharegpt-synth POISSON_REQUESTS (300) at 4, 16 and 32 req/s: one sweep (~75 + 19 + 9 s of arrivals)
#   sharegpt1000  sharegpt-synth 1000 at once
#   long200     200 x (2000 in, 128 out) at once
# Every workload draws its own prompt ids (--prompt-seed; the same on both servers), so no run finds another's
# prompts in the prefix cache. Estimated wall time: ferry ~35 s start + ~190 s, vLLM ~90 s start + ~190 s, ~520 s.
# A workload that no longer fits in BUDGET is skipped (said so, and "no data" in the table), never cut halfway.
#
# Before the call: vLLM installed on the host (the transfers that vllm-prepare prints; the last one may run
# `bash /tmp/vw/install.sh`, else this script runs it when /tmp/vsite has no vLLM), and .gpu/wheels carried:
#   bash benchmarks/online_side_by_side.sh            # from the repository root on the GPU host
# Settings: BUDGET (570 s), POISSON_REQUESTS (300), SG_REQUESTS (1000), LONG_REQUESTS (200), WARM_REQUESTS (200),
# WORKLOADS (a subset of "batch1 poisson sharegpt1000 long200"; all by default), FERRY_PORT / VLLM_PORT (8000, 8001; vllm-serve-dummy takes PORT), FERRY_ARGS /
# VLLM_ARGS (extra server flags, e.g. FERRY_ARGS="--max-prefill-tokens 1024"), ONLY (ferry | vllm: one server),
# VLLM_SERVE (/tmp/vw/vllm-serve-dummy), VLLM_SITE (/tmp/vsite), SHAPE (llama-3.1-8b: ferry's --hf-config).
# A dry run on a CPU (to check this script, not to time anything): a tiny SHAPE (a config.json), DTYPE=float32,
# FERRY_ARGS="--device cpu", small request counts, a stand-in nvidia-smi on PATH that prints 0, and as "vLLM" a
# VLLM_SERVE script that starts a second ferry on $PORT with VLLM_SITE a folder holding an empty vllm.py.
# Output: the table on stdout and in $OUT/table.md; $OUT/side_by_side.json (every run of both); server log tails.
set -u
T0=$(date +%s)
BUDGET=${BUDGET:-570}
POISSON_REQUESTS=${POISSON_REQUESTS:-300}
SG_REQUESTS=${SG_REQUESTS:-1000}
WARM_REQUESTS=${WARM_REQUESTS:-200}
FERRY_PORT=${FERRY_PORT:-8000}; VLLM_PORT=${VLLM_PORT:-8001}
LONG_REQUESTS=${LONG_REQUESTS:-200}
SHAPE=${SHAPE:-llama-3.1-8b}
VLLM_SITE=${VLLM_SITE:-/tmp/vsite}
OUT=${OUT:-/tmp/ferry-side-by-side}; mkdir -p "$OUT"
R=/tmp/ferry-side-by-side-runs; rm -rf $R; mkdir -p $R/ferry $R/vllm
VLLM_SERVE=${VLLM_SERVE:-/tmp/vw/vllm-serve-dummy}
ONLY=${ONLY:-}
if ls .gpu/wheels/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl || exit 1
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/ferry-triton-cache}  # where first-use compiles are seen
FERRY_PY=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $R/gpu.txt

elapsed() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( BUDGET - $(elapsed) )); }

wait_healthy() {  # url pid log name
  for _ in $(seq 400); do
    python3 -c "import urllib.request as u; u.urlopen('$1/health', timeout=1)" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "$4 died while starting"; tail -40 "$3"; return 1; }
    [ "$(left)" -lt 30 ] && { echo "$4 not healthy and the budget is spent"; tail -20 "$3"; return 1; }
    sleep 1
  done
  return 1
}

stop_server() {  # pid: the server leads its own process group (setsid); wait for the GPU to be given back
  kill -TERM -- -"$1" 2>/dev/null
  for _ in $(seq 30); do kill -0 "$1" 2>/dev/null || break; sleep 1; done
  kill -KILL -- -"$1" 2>/dev/null
  wait "$1" 2>/dev/null
  for _ in $(seq 30); do
    used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
    [ "${used:-0}" -lt 2000 ] && break
    sleep 1
  done
}

# bench SIDE URL FILE|- NEED_S ARGS...: one `ferry bench` run, skipped when NEED_S no longer fits
bench() {
  local side=$1 url=$2 file=$3 need=$4; shift 4
  if [ "$(left)" -lt "$need" ]; then
    echo "SKIPPED $side ${file:-warm-up}: $(left) s left, needs ~$need s"; return 0
  fi
  local out=()
  [ "$file" != "-" ] && out=(--out "$R/$side/$file")
  PYTHONPATH=$FERRY_PY timeout $(( $(left) - 5 )) python3 -m services.cli bench --url "$url" --no-progress \
      --hf-config "$SHAPE" "${out[@]}" "$@" > "$R/$side.bench.log" 2>&1
  local rc=$?
  if [ "$file" != "-" ]; then cat "$R/$side.bench.log"; else echo "$side warm-up: $(grep '^==' "$R/$side.bench.log")"; fi
  [ $rc -eq 124 ] && echo "TIMED OUT: $side $file"
  return 0
}

want() { [ -z "${WORKLOADS:-}" ] || [[ " $WORKLOADS " == *" $1 "* ]]; }  # WORKLOADS: a subset, e.g. "long200"

workloads() {  # side url
  local s=$1 u=$2 p=$POISSON_REQUESTS
  bench "$s" "$u" - 20 --workload fixed --num-requests 64 --input-len 300 --output-len 16 --prompt-seed 900
  bench "$s" "$u" - 30 --num-requests "$WARM_REQUESTS" --prompt-seed 901
  touch "$R/$s.warm"  # Triton kernels compiled after this stalled a live server: listed at the end
  want batch1 && bench "$s" "$u" batch1.1.json 10 --workload fixed --num-requests 1 --input-len 5 --output-len 256 --name batch-1
  want batch1 && bench "$s" "$u" batch1.2.json 10 --workload fixed --num-requests 1 --input-len 5 --output-len 256 --name batch-1 \
      --prompt-seed 1
  want poisson && bench "$s" "$u" poisson.json $(( p / 4 + p / 16 + p / 32 + 45 )) --num-requests "$p" --request-rate 4,16,32 \
      --prompt-seed 100 --plot "$OUT/latency_vs_load_$s.png"
  want sharegpt1000 && bench "$s" "$u" sharegpt1000.json 45 --num-requests "$SG_REQUESTS" --prompt-seed 200
  want long200 && bench "$s" "$u" long200.json 30 --workload fixed --num-requests "$LONG_REQUESTS" --input-len 2000 \
      --output-len 128 --prompt-seed 400
  echo "$s: Triton kernels compiled after the warm-up (each stalled the server):" \
    "$(find "$TRITON_CACHE_DIR" -newer "$R/$s.warm" -name '*.json' ! -name '__grp__*' 2>/dev/null | wc -l)"
  find "$TRITON_CACHE_DIR" -newer "$R/$s.warm" -name '*.json' ! -name '__grp__*' 2>/dev/null | xargs -r -n1 basename |
    sort | uniq -c | head -20
}

# ---- ferry
if [ "$ONLY" != vllm ]; then
  # setsid: the server leads a process group of its own, which stop_server ends whole
  PYTHONPATH=$FERRY_PY setsid python3 -m services.cli serve --load-format dummy --hf-config "$SHAPE" \
      --dtype "${DTYPE:-bfloat16}" --max-model-len 4096 --max-num-seqs 1024 --port $FERRY_PORT ${FERRY_ARGS:-} > $R/ferry_server.log 2>&1 &
  FERRY=$!
  if wait_healthy http://127.0.0.1:$FERRY_PORT $FERRY $R/ferry_server.log ferry; then
    echo "ferry healthy after $(elapsed) s"
    workloads ferry http://127.0.0.1:$FERRY_PORT
  fi
  stop_server $FERRY
  echo "ferry stopped at $(elapsed) s"
  tail -60 $R/ferry_server.log > "$OUT/ferry_server.log"
fi

# ---- vLLM
if [ "$ONLY" != ferry ]; then
  if ! PYTHONPATH=$VLLM_SITE python3 -c "import vllm" 2>/dev/null; then
    if [ -f /tmp/vw/install.sh ]; then
      echo "installing vLLM from /tmp/vw ..."; bash /tmp/vw/install.sh > $R/vllm_install.log 2>&1 || tail -20 $R/vllm_install.log
    else
      echo "no vLLM in $VLLM_SITE and no /tmp/vw/install.sh: run the transfers vllm-prepare prints first"
    fi
  fi
  if [ -f "$VLLM_SERVE" ] && PYTHONPATH=$VLLM_SITE python3 -c "import vllm" 2>/dev/null; then
    PORT=$VLLM_PORT setsid bash "$VLLM_SERVE" ${VLLM_ARGS:-} > $R/vllm_server.log 2>&1 &
    VLLM=$!
    if wait_healthy http://127.0.0.1:$VLLM_PORT $VLLM $R/vllm_server.log vLLM; then
      echo "vLLM healthy after $(elapsed) s"
      workloads vllm http://127.0.0.1:$VLLM_PORT
    fi
    stop_server $VLLM
    echo "vLLM stopped at $(elapsed) s"
    tail -60 $R/vllm_server.log > "$OUT/vllm_server.log"
  else
    echo "vLLM is not runnable here ($VLLM_SERVE, $VLLM_SITE): its column stays empty"
  fi
fi

echo
cat $R/gpu.txt
PYTHONPATH=$FERRY_PY python3 -m benchmarks.online_table $R/ferry $R/vllm --out "$OUT/side_by_side.json" \
    | tee "$OUT/table.md"
echo "total $(elapsed) s"
