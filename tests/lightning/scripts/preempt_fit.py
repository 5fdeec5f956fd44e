"""Standalone: one rank of a 2-process fit with AdaPrunerCallback (gloo, CPU), started by the test as a cluster
launcher would (``torchrun``-style or ``srun``-style environment variables; Lightning creates no process), so the
test can kill or signal each rank on its own.

Usage: python preempt_fit.py MODEL_DIR TEXT_DIR OUT RUN STRATEGY [CKPT]

``STRATEGY``: ``ddp`` or ``deepspeed3`` (Lightning's DeepSpeedStrategy, ZeRO-3, on DeepSpeed's CPU accelerator).
``CKPT``: the checkpoint to resume from (none: a fresh fit, or Lightning's own SLURM resume from an HPC checkpoint).
Environment: ``TRIAL_SLEEP`` / ``STEP_SLEEP`` hold each search trial / training step that many seconds (time for the
test to strike), ``MAX_STEPS``. The search trace, checkpoints (every step, and ``last.ckpt``) and the HPC checkpoints
of a SLURM requeue all live under ``OUT``. Each rank writes ``OUT/RUN_rank{r}.json`` (plan, pruned shapes, searches
run, steps, trace) when its fit ends, ``OUT/RUN_plan{r}.json`` right after pruning and ``OUT/RUN_pid{r}`` when
it starts.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy

from adapruner_lightning import AdaPrunerCallback, CausalLMModule, TextDataModule
from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.lightning.recovery import RecoveryConfig
from adapruner_lightning.search.config import SearchConfig

sys.path.insert(0, str(Path(__file__).parent))
from deepspeed_lightning import CpuDeepSpeedStrategy, count_search_runs  # noqa: E402

SEARCH = dict(trials=6, init_points=2, pool_size=8, objective_windows=2, objective_seq_len=32,
              max_keep_first=1, max_keep_last=1, metrics=["taylor_vector", "magnitude_l2"])


def slow_trials(seconds: float) -> None:
    from adapruner_lightning.core.session import PruningSession

    real = PruningSession.score

    def score(self, *args, **kwargs):
        value = real(self, *args, **kwargs)
        time.sleep(seconds)
        return value

    PruningSession.score = score


class Slow(Callback):
    """Holds every training step (before the checkpoint callbacks save it) and records the steps run here."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.steps = seconds, []

    def on_train_batch_end(self, trainer, *args) -> None:
        self.steps.append(trainer.global_step)
        time.sleep(self.seconds)


class PlanWriter(Callback):
    """Right after pruning (listed after the pruner): this rank's plan, so a rank killed later has left it."""

    def __init__(self, pruner: AdaPrunerCallback, path: Path) -> None:
        self.pruner, self.path = pruner, path

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self.path.write_text(json.dumps({"plan": self.pruner.plan.to_dict(), "trace": self.pruner.trace}))


def strategy(name: str):
    if name == "ddp":
        return DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=30))
    import deepspeed.comm.torch as ds_torch_comm

    ds_torch_comm.build_shm_op = lambda: None  # the CPU all-reduce op compiles for minutes; gloo carries everything
    config = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
              "train_micro_batch_size_per_gpu": 2, "zero_allow_untested_optimizer": True}
    return CpuDeepSpeedStrategy(config=config, process_group_backend="gloo", timeout=timedelta(seconds=60))


def main() -> None:
    model_dir, text_dir, out, run, kind = sys.argv[1:6]
    ckpt = sys.argv[6] if len(sys.argv) > 6 and sys.argv[6] != "none" else None
    out = Path(out)
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    (out / f"{run}_pid{rank}").write_text(str(os.getpid()))
    torch.set_num_threads(1)
    slow_trials(float(os.environ.get("TRIAL_SLEEP", "0")))
    searches = count_search_runs()
    slow = Slow(float(os.environ.get("STEP_SLEEP", "0")))
    pruner = AdaPrunerCallback(target_ratio=0.2, search=SearchConfig.of(**SEARCH), pruning=PruningConfig(sample_len=32),
                               recovery=RecoveryConfig(mode="full"), output_dir=str(out / "out"), export=False,
                               progress=False)
    checkpoints = ModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=-1)
    trainer = Trainer(accelerator="cpu", devices=2, strategy=strategy(kind), max_steps=int(os.environ["MAX_STEPS"]),
                      logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0, default_root_dir=str(out / "root"), use_distributed_sampler=False,
                      callbacks=[pruner, PlanWriter(pruner, out / f"{run}_plan{rank}.json"), slow, checkpoints])
    data = TextDataModule(model=model_dir, texts=[text_dir], seq_len=32, batch_size=2, val_windows=2)
    trainer.fit(CausalLMModule(model=model_dir, lr=1e-3), datamodule=data, ckpt_path=ckpt)
    model = trainer.lightning_module.model
    from adapruner_lightning.lightning import _compat

    with _compat.gathered(model):
        shapes = {n: list(p.shape) for n, p in model.named_parameters()}
    record = {"rank": rank, "plan": pruner.plan.to_dict(), "shapes": shapes, "searches": len(searches),
              "global_step": trainer.global_step, "steps": slow.steps, "trace": [t["trial"] for t in pruner.trace],
              "resumed_from": str(trainer.ckpt_path) if trainer.ckpt_path else None}
    (out / f"{run}_rank{rank}.json").write_text(json.dumps(record))
    print(f"[rank {rank}] PREEMPT_FIT_OK", flush=True)
    # Everything this script checks is written above. DeepSpeed's CPU shared-memory communicator sometimes aborts in
    # its C++ teardown at interpreter exit ("terminate called without an active exception", SIGABRT) after a
    # successful fit, under load; tear the process group down in order and leave without the static destructors.
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
