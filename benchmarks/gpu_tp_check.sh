#!/usr/bin/env bash
# Tensor parallelism in process on a host with two GPUs, one device call: all-reduce variants (plain and
# fused with RMSNorm), then benchmarks.tp_gpu_check (TP=1 vs TP=2 correctness and speed, kernel profile).
# The fused all-reduce + RMSNorm stays on for the second part only if the first found it bitwise right.
# Run from the repository root: bash benchmarks/gpu_tp_check.sh [tp_gpu_check args...]
set -u
OUT=${OUT:-/tmp/ferry-tp-check}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # required on the lent hosts
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 240 python3 -m benchmarks.tp_allreduce > "$OUT/allreduce.log" 2>&1
grep "^all-reduce" "$OUT/allreduce.log" || tail -20 "$OUT/allreduce.log"
fused_ok=$(python3 -c "
import json, sys
rows = json.load(open('$OUT/allreduce.json'))
r = [r for r in rows if r['variant'].startswith('fused')]
print(int(bool(r) and r[0].get('fused') is True and r[0].get('mismatches_of_200') == 0))" 2>/dev/null || echo 0)
[ "$fused_ok" = 1 ] || { echo "== fused all-reduce + RMSNorm off for the rest"; export FERRY_FUSED_ALLREDUCE_NORM=0; }
[ -n "${GEMV:-}" ] && timeout 120 python3 -m benchmarks.gemv 2>&1 | tail -12
timeout 420 python3 -m benchmarks.tp_gpu_check "$@" > "$OUT/tp_gpu_check.log" 2>&1
echo "rc=$?"
grep -E "^\[tp|^PASS|^FAIL|^INFO|^\||ratio|error|^    " "$OUT/tp_gpu_check.log" | grep -v "result " | tail -120
