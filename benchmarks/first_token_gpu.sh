#!/usr/bin/env bash
# Issue 17's first-token path on one GPU, in ONE device call: ferry serving the Llama-3.1-8B shape (dummy bf16,
# --max-num-seqs 1024, max model length 4096) with --trace-first-token; 40 batch-1 streaming requests (5 prompt
# token ids, 8 out) one after the other, timed by the client and at every hop; then the per-hop table
# (benchmarks/first_token_hops.py, the first 10 requests left out as warm-up). ~60 s with start-up.
#   bash benchmarks/first_token_gpu.sh              # from the repository root on the GPU host
# Settings: SHAPE (llama-3.1-8b), DTYPE (bfloat16), PORT (8000), REQUESTS (40), FERRY_ARGS (extra server flags).
# A dry run on a CPU (checks the script, times nothing): SHAPE=a tiny config.json DTYPE=float32 FERRY_ARGS="--device cpu"
# Output: the table on stdout and in $OUT/first_token_hops.txt; the server log in $OUT/server.log.
set -u
SHAPE=${SHAPE:-llama-3.1-8b}; PORT=${PORT:-8000}; REQUESTS=${REQUESTS:-40}
OUT=${OUT:-/tmp/ferry-first-token}; mkdir -p "$OUT"
if ls .gpu/wheels/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl || exit 1
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
PY=/tmp/site:$PWD
PYTHONPATH=$PY setsid python3 -m services.cli serve --load-format dummy --hf-config "$SHAPE" \
    --dtype "${DTYPE:-bfloat16}" --max-model-len 4096 --max-num-seqs 1024 --port "$PORT" --trace-first-token \
    ${FERRY_ARGS:-} > "$OUT/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 300); do
  python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" 2>/dev/null && break
  kill -0 $SERVER 2>/dev/null || { echo "ferry died while starting"; tail -40 "$OUT/server.log"; exit 1; }
  sleep 1
done
PYTHONPATH=$PY python3 benchmarks/first_token_hops.py --drive "http://127.0.0.1:$PORT" --requests "$REQUESTS" \
    --skip 10 "$OUT/server.log" | tee "$OUT/first_token_hops.txt"
kill -TERM -- -$SERVER 2>/dev/null; wait $SERVER 2>/dev/null
grep -E "ERROR|Traceback" "$OUT/server.log" | head -5
