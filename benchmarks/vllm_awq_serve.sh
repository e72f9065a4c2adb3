#!/usr/bin/env bash
# vLLM serving the Llama-3.1-8B shape with dummy AWQ weights (4-bit, group 128, zero points, GEMM packing), for
# issue 18's same-scheme comparison: the bundle's vllm-serve-dummy (../shared/tools) with a quantization_config
# added to the config.json it writes, into its own folder. No --quantization flag: vLLM picks its fastest AWQ kernel
# for the GPU from the config (awq_marlin on Hopper), as a deployment of a *-AWQ checkpoint would.
#   VLLM_SERVE=benchmarks/vllm_awq_serve.sh ONLY=vllm bash benchmarks/online_side_by_side.sh   # on the GPU host
set -euo pipefail
src=${VLLM_DUMMY:-/tmp/vw/vllm-serve-dummy}
dst=/tmp/vw/vllm-serve-awq-dummy
qc='"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},'
sed -e "s|\"torch_dtype\": \"bfloat16\",|\"torch_dtype\": \"bfloat16\", $qc|" -e 's|llama3-8b-dummy|llama3-8b-awq-dummy|' \
  "$src" > "$dst"
grep -q quant_method "$dst" || { echo "vllm_awq_serve.sh: $src no longer has the line to extend"; exit 1; }
exec bash "$dst" "$@"
