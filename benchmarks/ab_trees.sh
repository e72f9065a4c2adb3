#!/usr/bin/env bash
# Two source trees of ferry, one after the other on the same GPU, driven by the same client (this tree's
# `ferry bench`), through the full HTTP pipeline: Llama-3.1-8B shape, dummy bf16 weights, max-num-seqs 1024,
# max model length 4096. Each round: batch 1 (5 in, 256 out) twice, then sharegpt-synth 1000 at once.
# Rounds alternate OLD, NEW, OLD, NEW... so that drift of the host shows up as spread within a tree.
#
#   git archive <old-commit> | tar -x -C .gpu/old          # here, before the device call
#   bash benchmarks/ab_trees.sh .gpu/old .                 # on the GPU host, .gpu/wheels and .gpu/old carried
#
# ROUNDS (default 4), SG_RUNS (sharegpt runs per round, default 1) and BUDGET (seconds, default 560) bound it; a table of both trees and the ratios is printed last.
set -u
T0=$(date +%s)
OLD=$(cd "${1:?old tree}" && pwd); NEW=$(cd "${2:-.}" && pwd)
ROUNDS=${ROUNDS:-4}; BUDGET=${BUDGET:-560}
OUT=${OUT:-/tmp/ferry-ab}; mkdir -p "$OUT"
R=/tmp/ferry-ab-runs; rm -rf $R; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site "$NEW"/.gpu/wheels/*.whl || exit 1
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
PORT=8000; URL=http://127.0.0.1:$PORT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $R/gpu.txt
bench() { (cd "$NEW" && PYTHONPATH=/tmp/site:$NEW timeout 150 python3 -m services.cli bench --url $URL --no-progress "$@"); }

for round in $(seq 1 "$ROUNDS"); do
  if [ $(( round % 2 )) -eq 1 ]; then tree=old; dir=$OLD; else tree=new; dir=$NEW; fi
  left=$(( BUDGET - ($(date +%s) - T0) ))
  [ $left -lt 110 ] && { echo "round $round skipped: $left s left"; break; }
  (cd "$dir" && PYTHONPATH=/tmp/site:$dir exec python3 -m services.cli serve --load-format dummy \
      --hf-config llama-3.1-8b --dtype bfloat16 --max-model-len 4096 --max-num-seqs 1024 --port $PORT) \
      > "$OUT/server_$round.log" 2>&1 &
  server=$!
  for _ in $(seq 200); do
    python3 -c "import urllib.request as u; u.urlopen('$URL/health', timeout=1)" 2>/dev/null && break
    kill -0 $server 2>/dev/null || { echo "server ($tree) died"; tail -30 "$OUT/server_$round.log"; exit 1; }
    sleep 1
  done
  echo "round $round ($tree): healthy after $(( $(date +%s) - T0 )) s"
  # Warm-up: Triton JIT and the allocator see the batch sizes sharegpt-synth reaches (a cold first tree pays
  # compilation inside its measured run otherwise: seen as -8% in the first round).
  bench --num-requests 300 --name warmup > /dev/null
  bench --workload fixed --num-requests 1 --input-len 5 --output-len 256 --name "batch-1 $tree" --out $R/b1a_$round.json
  bench --workload fixed --num-requests 1 --input-len 5 --output-len 256 --name "batch-1 $tree" --out $R/b1b_$round.json
  for k in $(seq 1 "${SG_RUNS:-1}"); do
    bench --num-requests 1000 --name "sharegpt-1000 $tree" --out $R/sg_${round}_$k.json
  done
  kill -TERM $server; wait $server
  sleep 2
done

python3 - $R "$OUT" <<'PY'
import glob, json, os, statistics, sys
runs, out = sys.argv[1], sys.argv[2]
rows = {t: {"tpot": [], "sg": [], "sg_ttft": [], "incomplete": []} for t in ("old", "new")}
for path in sorted(glob.glob(os.path.join(runs, "*.json"))):
    for r in json.load(open(path)).get("runs", []):
        s, tree = r["summary"], r["name"].split()[-1]
        if r["name"].startswith("batch-1"):
            rows[tree]["tpot"].append(s["tpot_ms"]["p50"])
        elif s["completed"] < 1000:  # some requests failed: say so, keep it out of the medians
            rows[tree]["incomplete"].append(s["completed"])
        else:
            rows[tree]["sg"].append(s["output_throughput"])
            rows[tree]["sg_ttft"].append(s["ttft_ms"]["p50"])
json.dump(rows, open(os.path.join(out, "ab.json"), "w"))
print("\n" + open(os.path.join(runs, "gpu.txt")).read().strip())
fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs) or "-"
med = lambda xs: statistics.median(xs) if xs else float("nan")
print(f"{'metric':28s} {'old (each run)':32s} {'new (each run)':32s} {'new/old (medians)':>17s}")
for key, label in (("tpot", "batch-1 TPOT p50 ms"), ("sg", "sharegpt-1000 output tok/s"),
                   ("sg_ttft", "sharegpt-1000 TTFT p50 ms")):
    o, n = rows["old"][key], rows["new"][key]
    print(f"{label:28s} {fmt(o):32s} {fmt(n):32s} {med(n) / med(o):17.3f}")
for tree in ("old", "new"):
    if rows[tree]["incomplete"]:
        print(f"{tree}: sharegpt-1000 runs with failed requests (completed counts): {rows[tree]['incomplete']}")
PY
echo "total $(( $(date +%s) - T0 )) s"
