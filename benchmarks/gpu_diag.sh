#!/usr/bin/env bash
# Where sharegpt-synth's time goes: the same 1000 requests through HTTP with every process's CPU sampled
# (top, 1 s), then through the engine in one process (no services). Run like gpu_run.sh.
set -u
OUT=${OUT:-/tmp/ferry-diag}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
URL=http://127.0.0.1:8000
python3 -m services.cli serve --load-format dummy --hf-config llama-3.1-8b --dtype bfloat16 --max-model-len 4096 \
    --max-num-seqs 256 > "$OUT/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 300); do
  python3 -c "import urllib.request as u; u.urlopen('$URL/health', timeout=1)" 2>/dev/null && break; sleep 1
done
B="python3 -m services.cli bench --url $URL --no-progress"
$B --workload fixed --num-requests 64 --input-len 300 --output-len 16 --name warmup > /dev/null
top -b -d 1 -c -w 400 > /tmp/top.txt &
TOP=$!
$B --num-requests 1000 --out /tmp/diag_sharegpt.json
kill $TOP
kill -TERM $SERVER; wait $SERVER
python3 - <<'PY' | tee "$OUT/cpu.txt"
import collections, re
cpu = collections.defaultdict(list)
for line in open("/tmp/top.txt"):
    m = re.search(r"-m (services\.\w+(?: \w+)?)", line)
    if m and "python" in line:
        f = line.split()
        try:
            cpu[m.group(1)].append(float(f[8]))
        except (ValueError, IndexError):
            pass
for k, v in sorted(cpu.items()):
    busy = [x for x in v]
    print(f"{k:28s} samples {len(v):3d}  mean CPU {sum(busy)/max(1,len(busy)):6.1f}%  max {max(busy, default=0):6.1f}%")
PY
python3 -m benchmarks.engine_only --num-requests 1000 --out "$OUT/engine_only.json"
