#!/usr/bin/env bash
# The GPU check, for a session whose task is lent the device machine (one H200; see CONTRIBUTING.md).
# Run from this machine with the device tool:
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=580)
# after, once, here (the device's image lacks these; see CONTRIBUTING.md, "The GPU check"):
#   echo /.whl/ >> .git/info/exclude && python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl torch-pruning==1.6.1 bayesian-optimization==3.4.0 \
#     hjson pydantic==2.13.4 pydantic-core==2.46.4 annotated-types typing-inspection datasets==5.2.0 dill==0.4.1 \
#     multiprocess==0.70.19 \
#   && python3 -m pip download --no-deps --no-binary=:all: -d .whl deepspeed==0.19.8
# First (#19) benchmarks/gpu_fit.py: a 1.1 B random Llama in bf16 through the callback under Lightning's
# DeepSpeedStrategy, ZeRO-2, one GPU (search, prune, LoRA, evaluation, export, reload): peak memory, phase times.
# Then (#15) it measures, with the GPU's own bf16 GEMMs and max_memory_allocated, the search's peak memory on a random bf16
# Llama of Llama-3.1-8B's full shape (32 layers, 7.0 B decoder parameters): statistics pass, a taylor trial on a new
# subset, a cached-metric trial (ratios to the weights), and load_pruned of the 20 % plan (host memory), then the same
# on the 4-layer model the CPU benchmark uses (the transfer check of its ratios). Then (#34) the least-squares
# reconstruction's peaks at the 8B shape (benchmarks/memory_scale.py --reconstruction: Gram pass, an lstsq trial,
# a generation of the allocation stage on its plan, apply_plan with the re-fit; the Gram store stays in host memory). Results come back under $OUT.
set -euo pipefail
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
if compgen -G ".whl/deepspeed-*.tar.gz" > /dev/null; then  # pure Python; its ops are JIT-built only if used
  DS_BUILD_OPS=0 python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site \
    .whl/deepspeed-*.tar.gz
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 ADAPRUNER_PROGRESS=0
out="${OUT:-benchmarks/results}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_check.log"
timeout 200 python3 benchmarks/gpu_fit.py --out-dir "$out" 2>&1 | tee -a "$out/gpu_check.log" || true
for layers_and_limit in "32 200" "4 100"; do
  set -- $layers_and_limit
  timeout "$2" python3 benchmarks/search_cost.py --bf16-scale --device cuda --scale-layers "$1" --out-dir "$out" \
    2>&1 | tee -a "$out/gpu_check.log" || true
done
timeout 150 python3 benchmarks/memory_scale.py --reconstruction --device cuda --layers 32 --out-dir "$out" \
  2>&1 | tee -a "$out/gpu_check.log" || true
# (#33) The quality table on the full splits: the dense embedded model and FLAP (the reference baseline, one plan
# whatever the seed), every development and evaluation item of the seven standard tasks (--std-items 0) and 200
# Austen items a task, before recovery, paired by item. Needs the embedded model and the task data, which the image
# lacks and which do not fit one call: prepare them with scripts/gpu_quality_prepare.sh (its header has the three
# calls). Skipped, with a line saying so, when they are not there. About 3 min on an H200.
if [ -f runs/gpu_quality/model.a ] && [ -f runs/gpu_quality/model.b ] && [ -f .gpu_quality/model.c ]; then
  cat runs/gpu_quality/model.a runs/gpu_quality/model.b .gpu_quality/model.c > runs/gpu_quality/smollm2.gguf
  python3 -m pip install -q --no-index --no-deps --no-cache-dir --target /tmp/site .gpu_quality/data/wheels/*.whl
  ( export PYTHONPATH="$PWD/.gpu_quality/data:/tmp/site:$PYTHONPATH" ADAPRUNER_CACHE="$PWD/.gpu_quality/data/cache"
    timeout 300 python3 benchmarks/quality.py --model runs/gpu_quality/smollm2.gguf --ratios 0.2 --methods flap \
      --seeds 1 --recovery-seeds 0 --std-items 0 --std-dev-items 0 --items 200 --dev-items 100 --eval-tokens 20480 \
      --batch-size 64 --no-dense-recovery --out runs/gpu_quality/quality_full_splits ) 2>&1 | tee -a "$out/gpu_check.log" || true
  # one file back (the device tool returns at most 8): cells, tables, sittings
  tar -cf "$out/quality_full_splits.tar" --exclude plans -C runs/gpu_quality quality_full_splits || true
else
  echo "quality on the full splits: skipped (no model parts; see scripts/gpu_quality_prepare.sh)" | tee -a "$out/gpu_check.log"
fi
