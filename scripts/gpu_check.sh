#!/usr/bin/env bash
# The GPU check, for a session whose task is lent the device machine (one H200; see CONTRIBUTING.md).
# Run from this machine with the device tool:
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=540)
# after, once, here:  echo /.whl/ >> .git/info/exclude && python3 -m pip download --no-deps --only-binary=:all: \
#   --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 -d .whl torch-pruning==1.6.1
# It measures, with the GPU's own bf16 GEMMs and max_memory_allocated, the search's peak memory on a random bf16
# Llama of Llama-3.1-8B's full shape (32 layers, 7.0 B decoder parameters): statistics pass, a taylor trial on a new
# subset, a cached-metric trial (ratios to the weights), and load_pruned of the 20 % plan (host memory), then the same
# on the 4-layer model the CPU benchmark uses (the transfer check of its ratios). Results come back under $OUT.
set -euo pipefail
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 ADAPRUNER_PROGRESS=0
out="${OUT:-benchmarks/results}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_check.log"
for layers in 32 4; do
  timeout 240 python3 benchmarks/search_cost.py --bf16-scale --device cuda --scale-layers "$layers" --out-dir "$out" \
    2>&1 | tee -a "$out/gpu_check.log"
done
