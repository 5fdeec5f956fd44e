"""Standalone: a 2-process DDP fit on CPU (gloo) with AdaPrunerCallback on the tiny Llama.

Launched by tests/test_distributed.py (never by pytest itself: Lightning's "ddp" launcher re-runs the
command that started it, which is this script). Each rank writes ``<out>/rank{r}.json`` with what it saw:
the plan and a checksum of every parameter right after pruning (in ``setup``, before DDP's wrapper
broadcasts rank 0's weights), again at ``on_fit_start`` and after ``fit``; the training batches; how
often it called the datamodule's ``pruning_data`` and ran the search.

Usage: python ddp_fit.py MODEL_DIR TEXT_DIR OUT_DIR {ok,fail}

``ok``: the process group's timeout is 30 s and the search takes longer: 10 trials, each objective held for
7 s (a stand-in for a large model's objective pass), i.e. 35 s of trials per rank when the two ranks share them
and 70 s on one rank while the other waits in a collective (which the timeout kills). The recovery distils
(KL to the dense teacher mixed half and half with the LM loss): each rank records its teacher's weights.

``fail``: the callback's ``pruning_data`` raises ``RuntimeError("boom")`` on rank 0; each rank then
writes ``<out>/error_rank{r}.txt`` and prints ``[rank r] <exception>`` from ``on_exception``.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader

from adapruner_lightning import AdaPrunerCallback, CausalLMModule, DistillationConfig, TextDataModule
from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.evaluation.config import EvalConfig
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.lightning.datamodule import _collate
from adapruner_lightning.lightning.recovery import RecoveryConfig

MAX_STEPS = 2
PG_TIMEOUT_S, SLOW_TRIAL_S, SLOW_TRIALS = 30, 7.0, 10
VAL_TASK, VAL_ITEMS = "austen_cloze", 6
SEARCH = dict(trials=2, init_points=2, pool_size=8, objective_windows=2, objective_seq_len=32,
              max_keep_first=1, max_keep_last=1, metrics=["taylor_vector"])


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def row_key(row) -> str:
    return digest(torch.as_tensor(row)[:32].to(torch.int64))


class RankShuffledData(TextDataModule):
    """Training batches in a rank-dependent order; counts the ``pruning_data`` calls on this rank."""

    pruning_data_calls = 0

    def pruning_data(self, **kwargs):
        RankShuffledData.pruning_data_calls += 1
        return super().pruning_data(**kwargs)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        seed = self.seed + 1000 * (self.trainer.global_rank + 1)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, collate_fn=_collate,
                          generator=torch.Generator().manual_seed(seed))


SEARCH_RUNS = 0


def slow_objective() -> None:
    """Hold every trial's objective for SLOW_TRIAL_S seconds (after computing it)."""
    from adapruner_lightning.core.session import PruningSession

    real = PruningSession.score

    def score(self, *args, **kwargs):
        value = real(self, *args, **kwargs)
        time.sleep(SLOW_TRIAL_S)
        return value

    PruningSession.score = score


def count_search_runs() -> None:
    """Count ``run_search`` calls on this rank (the callback imports it from the module when it searches)."""
    import adapruner_lightning.search.runner as search_module

    real = search_module.run_search

    def counted(*args, **kwargs):
        global SEARCH_RUNS
        SEARCH_RUNS += 1
        return real(*args, **kwargs)

    search_module.run_search = counted


class BoomOnRankZero(AdaPrunerCallback):
    def pruning_data(self, trainer, pl_module, tokenizer):
        if trainer.global_rank == 0:
            raise RuntimeError("boom")
        return super().pruning_data(trainer, pl_module, tokenizer)


class Recorder(Callback):
    """Writes what this rank saw; listed after the AdaPrunerCallback, so its ``setup`` runs right after pruning."""

    def __init__(self, pruner: AdaPrunerCallback, out: Path) -> None:
        self.pruner, self.out = pruner, out
        self.record: dict = {"batches": [], "losses": []}

    def _params(self, pl_module) -> dict:
        return {n: digest(p) for n, p in pl_module.model.named_parameters()}

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        self.record.update(
            rank=trainer.global_rank, world_size=trainer.world_size,
            plan=self.pruner.plan.to_dict() if self.pruner.plan else None, trace=self.pruner.trace,
            params_after_pruning=self._params(pl_module),
            shapes={n: list(p.shape) for n, p in pl_module.model.named_parameters()},
            eval_modules_after_pruning=[n for n, m in pl_module.named_modules() if not m.training],
        )

    def on_fit_start(self, trainer, pl_module) -> None:
        self.record["params_at_fit_start"] = self._params(pl_module)
        self.record["strategy_model"] = type(trainer.strategy.model).__name__

    def on_train_start(self, trainer, pl_module) -> None:
        self.record["eval_modules_at_train_start"] = [n for n, m in pl_module.named_modules() if not m.training]
        dm = trainer.datamodule
        self.record["train_rows"] = sorted({row_key(r["input_ids"]) for r in dm.train_set})
        splits = getattr(dm, "_splits", None)
        self.record["objective_rows"] = [row_key(r) for r in splits.objective] if splits is not None else []
        self.record["pool_rows"] = [row_key(r) for r in splits.pool] if splits is not None else []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.record["batches"].append(digest(batch["input_ids"]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.record["losses"].append(float(outputs["loss"]))

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        rank = trainer.global_rank
        message = f"[rank {rank}] {type(exception).__name__}: {exception}"
        print(message, file=sys.stderr, flush=True)
        (self.out / f"error_rank{rank}.txt").write_text(message)
        if rank == 0 and trainer.world_size > 1:  # let rank 1 report before rank 0 exits
            deadline = time.monotonic() + 30
            while not (self.out / "error_rank1.txt").exists() and time.monotonic() < deadline:
                time.sleep(0.1)


def main() -> None:
    model_dir, text_dir, out, mode = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # two ranks on a small shared machine
    count_search_runs()
    kind = BoomOnRankZero if mode == "fail" else AdaPrunerCallback
    search, timeout, tracking, validation = SEARCH, 120, {}, dict(limit_val_batches=0)
    if mode == "ok":  # also: every rank evaluates; one validation scores VAL_ITEMS items, half on each rank
        slow_objective()
        search, timeout = {**SEARCH, "trials": SLOW_TRIALS}, PG_TIMEOUT_S
        tracking = dict(eval=EvalConfig(texts=[str(Path(text_dir) / "alpha.txt")], max_tokens=256, val_tasks=[VAL_TASK],
                                        val_items=VAL_ITEMS),
                        distillation=DistillationConfig(weight=0.5))  # every rank its own teacher
        validation = dict(limit_val_batches=1, val_check_interval=MAX_STEPS)
    pruner = kind(target_ratio=0.2, search=SearchConfig.of(**search), pruning=PruningConfig(sample_len=32),
                  recovery=RecoveryConfig(mode="full"), output_dir=str(out / "adapruner_out"), export=False,
                  progress=False, **tracking)
    recorder = Recorder(pruner, out)
    trainer = Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo",
                                                                         timeout=timedelta(seconds=timeout)),
                      max_steps=MAX_STEPS, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, num_sanity_val_steps=0, **validation,
                      use_distributed_sampler=False, default_root_dir=str(out), callbacks=[pruner, recorder])
    module = CausalLMModule(model=model_dir, lr=1e-3)
    data = RankShuffledData(model=model_dir, texts=[text_dir], seq_len=32, batch_size=2, val_windows=2)
    trainer.fit(module, datamodule=data)
    record = recorder.record
    record.update(params_after_fit=recorder._params(module), global_step=trainer.global_step,
                  pruning_data_calls=RankShuffledData.pruning_data_calls, search_runs=SEARCH_RUNS,
                  losses_finite=all(math.isfinite(x) for x in record["losses"]),
                  search_seconds=pruner.report["seconds"].get("search"),
                  val_scores={k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/acc")},
                  teacher={n: digest(p) for n, p in pruner.teacher.model.named_parameters()} if pruner.teacher else None,
                  dense={n: digest(p) for n, p in CausalLMModule(model=model_dir).model.named_parameters()},
                  logged=sorted(trainer.logged_metrics))
    if mode == "ok" and trainer.is_global_zero:  # the same items scored here alone, on the final weights
        from adapruner_lightning.data.text import texts_for
        from adapruner_lightning.lightning.tracking import ValidationTasks

        items = ValidationTasks([VAL_TASK], texts_for(tracking["eval"].texts), VAL_ITEMS)
        record["val_scores_one_process"] = items.score(module.model, module.tokenizer)
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
    print(f"[rank {trainer.global_rank}] DDP_FIT_OK", flush=True)


if __name__ == "__main__":
    main()
