"""Standalone: Lightning's own ``DeepSpeedStrategy`` drives AdaPrunerCallback end to end, on the CPU (gloo, with
``DS_ACCELERATOR=cpu``) or on every visible GPU (``DEVICES`` = 0: all of them).

On the CPU a test-only subclass lifts the strategy's CUDA-only checks: ``setup_environment`` (refuses a non-CUDA
accelerator), ``setup_distributed`` (validates CUDA device indices) and ``root_device`` (indexes CUDA devices);
everything else is Lightning's and DeepSpeed's own code, on DeepSpeed's CPU accelerator (``DS_ACCELERATOR=cpu``).
With ``devices=2`` Lightning's launcher re-runs this script as rank 1.

One run: search (both ranks), prune, recovery fine-tune (``lora`` or ``full``) for MAX_STEPS steps with a
DeepSpeed checkpoint at the last step, evaluation of the recovered model on ``eval_texts`` at the end of fit (every
rank; under ZeRO-3 a forward needs every rank), export. Rank 0 then reloads the export and evaluates it the same
way. ``resume``: fit again from that checkpoint for 2 more steps. Each rank writes ``OUT/<phase>_rank{r}.json``.

DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce op (``deepspeed_shm_comm``, minutes of g++ on a
fresh machine) when its communication backend starts; the training path here never calls it (gloo carries every
collective), so it is skipped unless ``ADAPRUNER_TEST_DS_SHM=1``.

``late``: the module creates its model in ``configure_model()`` (as ZeRO-3 users do), not in ``__init__``.

Usage: python deepspeed_lightning.py MODEL_DIR TEXT_FILE OUT_DIR STAGE {lora,full} DEVICES {fit,resume} [late]
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

from adapruner_lightning import AdaPrunerCallback, CausalLMModule, TextDataModule
from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.evaluation.config import EvalConfig
from adapruner_lightning.lightning.recovery import RecoveryConfig
from adapruner_lightning.search.config import SearchConfig

MAX_STEPS, MORE_STEPS = 3, 2
SEARCH = dict(trials=2, init_points=2, pool_size=8, objective_windows=2, objective_seq_len=32,
              max_keep_first=1, max_keep_last=1, metrics=["taylor_vector"])
EVAL_TOKENS = 256


class CpuDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy with its three CUDA-only checks lifted (tests only)."""

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # skips DeepSpeedStrategy's "only supported on CUDA GPUs"

    def setup_distributed(self) -> None:
        from lightning.fabric.utilities.seed import reset_seed

        reset_seed()  # as DeepSpeedStrategy.setup_distributed, without the CUDA device-index validation
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:  # DeepSpeed's engine reads the rank's device index from it
        return torch.device("cpu", self.local_rank)


class LateModule(CausalLMModule):
    """CausalLMModule whose model is created in ``configure_model()`` (idempotent, as Lightning asks)."""

    def __init__(self, model_dir: str, **kwargs) -> None:
        super().__init__(model=model_dir, **kwargs)
        self.spec, self.model, self.created = model_dir, None, 0

    def configure_model(self) -> None:
        if self.model is None:
            from adapruner_lightning.data.models import load_model

            self.model = load_model(self.spec)[0].train()
            self.created += 1


def count_search_runs() -> list[int]:
    import adapruner_lightning.search.runner as runner

    real, calls = runner.run_search, []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    runner.run_search = counted
    return calls


class Recorder(Callback):
    """What this rank saw, listed after the pruning callback."""

    def __init__(self, pruner: AdaPrunerCallback) -> None:
        self.pruner, self.record = pruner, {"losses": []}

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self.record["plan"] = self.pruner.plan.to_dict() if self.pruner.plan else None
            model = pl_module.model.get_base_model() if hasattr(pl_module.model, "peft_config") else pl_module.model
            self.record["shapes"] = {n.replace(".base_layer", ""): list(p.shape) for n, p in model.named_parameters()
                                     if "lora_" not in n}

    def on_fit_start(self, trainer, pl_module) -> None:
        self.record["strategy_model"] = type(trainer.strategy.model).__name__
        self.record["partitioned"] = any(hasattr(p, "ds_id") for p in pl_module.parameters())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.record["losses"].append(float(outputs["loss"]))


def reload_and_evaluate(export: Path, text: str) -> dict:
    """Rank 0: the exported model, reloaded and evaluated as the callback evaluated the recovered model."""
    from adapruner_lightning.outputs.export import load_pruned
    from adapruner_lightning.outputs.report import evaluate_stage

    model, tokenizer, plan = load_pruned(export, device="cpu")
    scores, _ = evaluate_stage(model, tokenizer, EvalConfig(texts=[text], max_tokens=EVAL_TOKENS), progress=False)
    return {"exported_plan": plan.to_dict(), "exported_scores": scores,
            "exported_shapes": {n: list(p.shape) for n, p in model.named_parameters()}}


def main() -> None:
    model_dir, text, out, stage, mode, devices, phase = sys.argv[1:8]
    out, stage, devices = Path(out), int(stage), int(devices)
    torch.set_num_threads(1)
    if os.environ.get("ADAPRUNER_TEST_DS_SHM") != "1" and os.environ.get("DS_ACCELERATOR") == "cpu":
        import deepspeed.comm.torch as ds_torch_comm

        ds_torch_comm.build_shm_op = lambda: None
    searches = count_search_runs()
    pruner = AdaPrunerCallback(target_ratio=0.2, search=SearchConfig.of(**SEARCH), pruning=PruningConfig(sample_len=32),
                               recovery=RecoveryConfig(mode=mode, lora_r=4), output_dir=str(out / "adapruner_out"),
                               export=True, eval=EvalConfig(texts=[text], max_tokens=EVAL_TOKENS), progress=False)
    recorder = Recorder(pruner)
    checkpoints = ModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=MAX_STEPS, save_top_k=-1)
    config = {"zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
              "train_micro_batch_size_per_gpu": 2, "zero_allow_untested_optimizer": True}
    steps = MAX_STEPS + (MORE_STEPS if phase == "resume" else 0)
    on_cpu = os.environ.get("DS_ACCELERATOR") == "cpu"
    strategy = CpuDeepSpeedStrategy(config=config, process_group_backend="gloo") if on_cpu else \
        DeepSpeedStrategy(config=config)
    devices = devices or torch.cuda.device_count()
    trainer = Trainer(accelerator="cpu" if on_cpu else "gpu", devices=devices, max_steps=steps, logger=False,
                      strategy=strategy,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0, default_root_dir=str(out), callbacks=[pruner, recorder, checkpoints])
    late = sys.argv[8:] == ["late"]
    module = LateModule(model_dir, lr=1e-3) if late else CausalLMModule(model=model_dir, lr=1e-3)
    data = TextDataModule(model=model_dir, texts=[str(Path(text).parent)], seq_len=32, batch_size=2, val_windows=2)
    ckpt = str(next((out / "ckpt").glob(f"*step={MAX_STEPS}*"))) if phase == "resume" else None
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    record = recorder.record
    record.update(rank=trainer.global_rank, world_size=trainer.world_size, global_step=trainer.global_step,
                  searches=len(searches), trace_ranks=[t.get("rank") for t in pruner.trace],
                  losses_finite=bool(record["losses"]) and all(math.isfinite(x) for x in record["losses"]),
                  report=pruner.report if trainer.is_global_zero else None,
                  checkpoints=sorted(p.name for p in (out / "ckpt").glob("*")),
                  models_created=getattr(module, "created", None))
    if trainer.is_global_zero:
        record.update(reload_and_evaluate(out / "adapruner_out" / "adapruner" / "pruned_model", text))
    (out / f"{phase}_rank{trainer.global_rank}.json").write_text(json.dumps(record, default=str))
    print(f"[rank {trainer.global_rank}] DEEPSPEED_LIGHTNING_OK", flush=True)


if __name__ == "__main__":
    main()
