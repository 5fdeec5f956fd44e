"""Standalone (GPU only): Lightning ``DeepSpeedStrategy`` fit with AdaPrunerCallback on every visible GPU.

Launched by tests/test_distributed.py; with several GPUs Lightning's launcher re-runs this script once
per extra rank. ``stage3_param_persistence_threshold`` is 0 so that even the tiny model's weights are
really partitioned under ZeRO-3 (by default DeepSpeed keeps parameters under 1e5 elements whole, which
would hide what happens to a real-sized model). Each rank writes ``<out>/rank{r}.json``; rank 0 reloads
the exported model and records its shapes.

Usage: python deepspeed_fit.py MODEL_DIR TEXT_DIR OUT_DIR STAGE
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.strategies import DeepSpeedStrategy

from adapruner_lightning import AdaPrunerCallback, CausalLMModule, TextDataModule
from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.lightning.recovery import RecoveryConfig

MAX_STEPS = 2
SEARCH = dict(trials=2, init_points=2, pool_size=8, subset_size=3, objective_windows=2, objective_seq_len=32,
              max_keep_first=1, max_keep_last=1, metrics=["taylor_vector"])


class Recorder(Callback):
    def __init__(self, pruner: AdaPrunerCallback) -> None:
        self.pruner, self.record = pruner, {"losses": []}

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self.record["plan"] = self.pruner.plan.to_dict() if self.pruner.plan else None
            self.record["shapes"] = {n: list(p.shape) for n, p in pl_module.model.named_parameters()}

    def on_fit_start(self, trainer, pl_module) -> None:
        self.record["strategy_model"] = type(trainer.strategy.model).__name__

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.record["losses"].append(float(outputs["loss"]))


def main() -> None:
    model_dir, text_dir, out, stage = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    out.mkdir(parents=True, exist_ok=True)
    pruner = AdaPrunerCallback(target_ratio=0.2, search=SearchConfig.of(**SEARCH), pruning=PruningConfig(sample_len=32),
                               recovery=RecoveryConfig(mode="full"), output_dir=str(out / "adapruner_out"), export=True,
                               progress=False)
    recorder = Recorder(pruner)
    config = {"zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
              "train_micro_batch_size_per_gpu": 2, "zero_allow_untested_optimizer": True}
    trainer = Trainer(accelerator="gpu", devices=torch.cuda.device_count(), strategy=DeepSpeedStrategy(config=config),
                      max_steps=MAX_STEPS, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0,
                      default_root_dir=str(out), callbacks=[pruner, recorder])
    module = CausalLMModule(model=model_dir, lr=1e-3)
    data = TextDataModule(model=model_dir, texts=[text_dir], seq_len=32, batch_size=2, val_windows=2)
    trainer.fit(module, datamodule=data)
    record = recorder.record
    record.update(rank=trainer.global_rank, world_size=trainer.world_size, global_step=trainer.global_step,
                  losses_finite=bool(record["losses"]) and all(math.isfinite(x) for x in record["losses"]))
    if trainer.is_global_zero:
        from adapruner_lightning.core.export import load_pruned

        try:
            reloaded, _, plan = load_pruned(out / "adapruner_out" / "adapruner" / "pruned_model", device="cpu")
            record["exported_shapes"] = {n: list(p.shape) for n, p in reloaded.named_parameters()}
            record["exported_plan"] = plan.to_dict()
        except Exception as exc:  # noqa: BLE001 - reported to the test
            record["export_error"] = f"{type(exc).__name__}: {exc}"[:2000]
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
    print(f"[rank {trainer.global_rank}] DEEPSPEED_FIT_OK", flush=True)


if __name__ == "__main__":
    main()
