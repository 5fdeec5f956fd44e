"""Standalone: prune a tiny Llama non-uniformly, then train it under a DeepSpeed engine on CPU (ZeRO 2 and 3).

Launched by tests/test_distributed.py in a fresh interpreter with a single-process gloo environment
(MASTER_ADDR, MASTER_PORT, RANK=0, WORLD_SIZE=1, LOCAL_RANK=0, DS_ACCELERATOR=cpu). Writes
``<out>/deepspeed.json``: the plan, the pruned shapes, and per ZeRO stage the losses, whether parameters
changed and the full shapes gathered from the engine. Exit status 3 with ``<out>/skip.txt`` means
DeepSpeed cannot run here (the reason is in the file).

DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce op (``deepspeed_shm_comm``, minutes of g++
on a fresh machine) when its communication backend starts; with one process it is never used, so it is
skipped unless ``ADAPRUNER_TEST_DS_SHM=1`` (then the real op is built or loaded from the torch
extensions cache).

Usage: python deepspeed_cpu.py MODEL_DIR OUT_DIR [STAGE ...]
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

SKIP_EXIT = 3


def skip(out: Path, reason: str) -> None:
    (out / "skip.txt").write_text(reason)
    print(f"SKIP: {reason}", flush=True)
    sys.exit(SKIP_EXIT)


def main() -> None:
    model_dir, out = sys.argv[1], Path(sys.argv[2])
    stages = [int(s) for s in sys.argv[3:]] or [2, 3]
    out.mkdir(parents=True, exist_ok=True)

    import torch

    try:
        import deepspeed
        from deepspeed.accelerator import get_accelerator
    except Exception as exc:  # noqa: BLE001 - reported as the skip reason
        skip(out, f"deepspeed cannot be imported: {type(exc).__name__}: {exc}")
    if get_accelerator().device_name() != "cpu":
        skip(out, f"DeepSpeed picked accelerator {get_accelerator().device_name()!r}, not the CPU one")

    from transformers import AutoModelForCausalLM

    from adapruner_lightning.api import prune

    def pruned_model():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        plan = prune(model, None, target_ratio=0.25, metric="magnitude_l2", keep_first=1, progress=False)
        return model.train(), plan

    model, plan = pruned_model()
    result = {"plan": plan.to_dict(), "uniform": plan.is_uniform,
              "pruned_shapes": {n: list(p.shape) for n, p in model.named_parameters()}, "stages": {}}
    vocab = model.config.vocab_size
    del model

    if os.environ.get("ADAPRUNER_TEST_DS_SHM") != "1":
        import deepspeed.comm.torch as ds_torch_comm

        ds_torch_comm.build_shm_op = lambda: None  # single process: the shm all-reduce is never used
    try:
        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    except Exception as exc:  # noqa: BLE001
        skip(out, f"deepspeed.init_distributed(gloo) failed: {type(exc).__name__}: {exc}")

    for stage in stages:
        model, _ = pruned_model()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
                  "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
                  "gradient_clipping": 1.0, "steps_per_print": 10**6, "wall_clock_breakdown": False}
        try:
            engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
                                              config=config)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            skip(out, f"deepspeed.initialize(ZeRO-{stage}) failed on CPU: {type(exc).__name__}: {exc}")
        generator = torch.Generator().manual_seed(stage)
        losses = []
        for _ in range(3):
            ids = torch.randint(0, vocab, (2, 16), generator=generator)
            loss = engine(input_ids=ids, labels=ids, use_cache=False).loss
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
        gathered, changed = {}, {}
        for name, param in engine.module.named_parameters():
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                gathered[name] = list(param.shape)
                changed[name] = not torch.equal(param.detach().cpu(), before[name])
        result["stages"][str(stage)] = {
            "losses": losses, "gathered_shapes": gathered, "changed": changed,
            "local_shapes": {n: list(p.shape) for n, p in engine.module.named_parameters()},
            "partitioned": any(hasattr(p, "ds_id") for p in engine.module.parameters()),
        }
        engine.destroy()
        del engine, model
    (out / "deepspeed.json").write_text(json.dumps(result))
    print("DEEPSPEED_OK", flush=True)


if __name__ == "__main__":
    main()
