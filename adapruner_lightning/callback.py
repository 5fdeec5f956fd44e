"""AdaPrunerCallback: search, prune and set up recovery inside ``Trainer.fit``; a thin orchestrator.

All pruning happens in ``setup(stage="fit")``: the device is known, while optimizers and the strategy's
wrapper (DDP / DeepSpeed engine) do not exist yet. Rank 0 searches, the plan is broadcast in a
success/failure envelope, and every rank prunes identically. The rest of ``fit`` is the recovery fine-tune.
On resume (``ckpt_path``) the plan stored in the checkpoint is replayed before the weights load; no search.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from adapruner_lightning.config import PruningConfig, SearchConfig
from adapruner_lightning.errors import AdaPrunerError, ConfigError, SearchFailed, check_fraction
from adapruner_lightning.groups import total_params
from adapruner_lightning.plan import PLAN_FILE, PruningPlan
from adapruner_lightning.recovery import RecoveryConfig, check_lora_targets, unwrap, wrap_for_recovery

log = logging.getLogger(__name__)
STATE_VERSION = 1


def _gathered(model: nn.Module):
    """Gather ZeRO-3 partitioned parameters (full weights on rank 0) for the block; a no-op otherwise."""
    partitioned = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0)


SUPPORTED_STRATEGIES = ("SingleDeviceStrategy", "DDPStrategy", "DeepSpeedStrategy")


def _check_strategy(trainer: Trainer) -> None:
    """Refuse strategies that shard or wrap the model before ``setup`` (pruning needs whole modules)."""
    names = {cls.__name__ for cls in type(trainer.strategy).__mro__}
    if not names & set(SUPPORTED_STRATEGIES):
        raise ConfigError("trainer strategy", type(trainer.strategy).__name__, f"one of {list(SUPPORTED_STRATEGIES)}",
                          hint="prune with DDP/DeepSpeed (or a single device), then fine-tune the export with any strategy")


def _fit_ckpt_path(trainer: Trainer) -> str | None:
    """The checkpoint ``fit`` is resuming from, already during ``setup``.

    Lightning records ``trainer.ckpt_path`` only when it restores, after ``setup``; the path given to
    ``fit(ckpt_path=...)`` is then a local of ``Trainer._run`` (Lightning 2.x), read here from the call stack.
    """
    if trainer.ckpt_path:
        return str(trainer.ckpt_path)
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code.co_name == "_run" and frame.f_locals.get("self") is trainer:
            path = frame.f_locals.get("ckpt_path")
            return str(path) if path else None
        frame = frame.f_back
    return None


class AdaPrunerCallback(Callback):
    """Prune the Hugging Face causal LM inside a LightningModule at the start of ``fit``; fit then recovers it.

    Args:
        target_ratio: fraction of parameters to remove (overrides ``pruning.target_ratio``).
        pruning: pruning options (metric when not searching, basis, schedule, round_to ...).
        search: search options; ``SearchConfig(trials=0)`` prunes with ``pruning`` as given.
        recovery: LoRA / full / no fine-tuning after pruning.
        plan: path to a ``pruning_plan.json`` to apply instead of searching (``target_ratio`` must then be None).
        model_attr: attribute of the LightningModule holding the HF model (auto-detected when None).
        output_dir: where the report, search trace, plot and export go (default: the trainer's log dir).
        export: save the pruned (and merged) model at the end of fit.
        eval_texts: held-out text specs for the report (e.g. ``["austen:evaluation"]``); None: no evaluation.
        eval_tasks: zero-shot tasks for the report.
        eval_max_tokens: tokens per evaluation text.
        eval_items: items per zero-shot task.
        progress: show progress bars.

    Raises:
        ConfigError: on any invalid argument or combination, at construction.

    Example::

        trainer = Trainer(max_steps=100, callbacks=[AdaPrunerCallback(target_ratio=0.2)])
        trainer.fit(module, datamodule=datamodule)
    """

    def __init__(self, target_ratio: Optional[float] = 0.2, pruning: Optional[PruningConfig] = None,
                 search: Optional[SearchConfig] = None, recovery: Optional[RecoveryConfig] = None,
                 plan: Optional[str] = None, model_attr: Optional[str] = None, output_dir: Optional[str] = None,
                 export: bool = True, eval_texts: Optional[list[str]] = None, eval_tasks: Optional[list[str]] = None,
                 eval_max_tokens: int = 8192, eval_items: int = 100, progress: bool = True) -> None:
        super().__init__()
        if plan is not None and target_ratio is not None and pruning is None:
            raise ConfigError("target_ratio", target_ratio, "None when an explicit plan is given",
                              hint="the plan fixes what is removed; pass target_ratio=None with plan=...")
        if plan is not None and not Path(plan).is_file():
            raise ConfigError("plan", plan, "an existing pruning_plan.json")
        pruning = pruning or PruningConfig()
        if target_ratio is not None:
            check_fraction("target_ratio", target_ratio)
            pruning = PruningConfig(**{**pruning.__dict__, "target_ratio": target_ratio})
        self.pruning, self.search = pruning, search if search is not None else SearchConfig(trials=8, init_points=4)
        self.recovery = recovery or RecoveryConfig()
        self.plan_path, self.model_attr, self.output_dir = plan, model_attr, output_dir
        self.export, self.progress = export, progress
        self.eval_texts, self.eval_tasks = eval_texts, list(eval_tasks or [])
        self.eval_max_tokens, self.eval_items = eval_max_tokens, eval_items
        self.plan: PruningPlan | None = None
        self.trace: list[dict[str, Any]] = []
        self.report: dict[str, Any] = {"quality": {}, "seconds": {}, "params": {}}
        self._applied = False
        self._data_split = False  # whether this rank's datamodule already split off pool/objective windows

    # ------------------------------------------------------------------ finding things in the user's objects

    def find_model(self, pl_module: LightningModule) -> tuple[str, nn.Module]:
        """The (attribute name, HF causal LM) inside ``pl_module``; override for unusual layouts."""
        from transformers import PreTrainedModel

        if self.model_attr is not None:
            model = getattr(pl_module, self.model_attr, None)
            if model is None:
                raise ConfigError("model_attr", self.model_attr, f"an attribute of {type(pl_module).__name__}")
            return self.model_attr, model
        found = [(n, m) for n, m in pl_module.named_children() if isinstance(m, PreTrainedModel)]
        if len(found) != 1:
            raise ConfigError("model_attr", None, f"exactly one PreTrainedModel child of {type(pl_module).__name__} "
                              f"(found {[n for n, _ in found]})",
                              hint="create the model in __init__ and pass model_attr='<attribute name>'")
        return found[0]

    # ------------------------------------------------------------------ hooks

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or self._applied:
            return
        _check_strategy(trainer)
        attr, model = self.find_model(pl_module)
        check_lora_targets(model, self.recovery)
        plan = self._plan_from_checkpoint(trainer) or self._plan_from_file()
        started = time.perf_counter()
        if plan is None:
            plan = self._search_and_broadcast(trainer, pl_module, model)
        else:
            rank_zero_info(f"adapruner: replaying a stored plan ({plan.achieved_ratio:.1%} removed); no search")
        if not self._data_split:
            self._exclude_objective_from_training(trainer)
        self._prune(trainer, pl_module, attr, model, plan)
        self.report["seconds"]["search_and_prune"] = time.perf_counter() - started

    def _exclude_objective_from_training(self, trainer: Trainer) -> None:
        """Ranks that did not search (and resumed runs) split the datamodule's data the same way rank 0 did,
        so the objective windows stay out of fine-tuning on every rank."""
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "pruning_data"):
            self.pruning_data(trainer, None, None)

    def _plan_from_file(self) -> PruningPlan | None:
        return PruningPlan.load(self.plan_path) if self.plan_path else None

    def _plan_from_checkpoint(self, trainer: Trainer) -> PruningPlan | None:
        path = _fit_ckpt_path(trainer)
        if path and Path(path).is_dir():  # a DeepSpeed checkpoint is a directory; callback state is in rank 0's file
            found = sorted(Path(path).glob("*/mp_rank_00_model_states.pt"))
            path = str(found[0]) if found else None
        if not path or not Path(path).is_file():
            return None
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        for key, state in checkpoint.get("callbacks", {}).items():
            if key.startswith(type(self).__name__) and isinstance(state, dict) and state.get("plan"):
                self.trace = list(state.get("trace", []))
                return PruningPlan.from_dict(state["plan"])
        return None

    def _search_and_broadcast(self, trainer: Trainer, pl_module: LightningModule, model: nn.Module) -> PruningPlan:
        envelope: dict[str, Any] = {"ok": False, "error": "rank 0 did not report"}
        if trainer.is_global_zero:
            try:
                envelope = {"ok": True, **self._search(trainer, pl_module, model)}
            except Exception as exc:  # noqa: BLE001 - every failure must reach the other ranks
                log.exception("adapruner: the search failed on rank 0")
                envelope = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                if trainer.world_size == 1:
                    raise
        envelope = trainer.strategy.broadcast(envelope, src=0)
        if not envelope["ok"]:
            raise SearchFailed(f"adapruner: the search failed on rank 0: {envelope['error']}")
        self.trace = envelope.get("trace", [])
        self.report.update(envelope.get("report", {}))
        return PruningPlan.from_dict(envelope["plan"])

    def pruning_data(self, trainer: Trainer, pl_module: LightningModule, tokenizer: Any):
        """Calibration pool and objective windows: from the datamodule's ``pruning_data`` when it has one,
        else seeded disjoint slices of the train dataloader's ``input_ids``; override to supply your own."""
        from adapruner_lightning.calibration import DataSplits

        s, p = self.search, self.pruning
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "pruning_data"):
            self._data_split = True
            return dm.pruning_data(pool_size=s.pool_size, pool_seq_len=p.sample_len, objective_windows=s.objective_windows,
                                   objective_seq_len=s.objective_seq_len, seed=p.seed)
        rows = self._train_rows(trainer, pl_module, s.pool_size + s.objective_windows)
        order = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(p.seed))
        objective = rows[order[: s.objective_windows]]
        pool = rows[order[s.objective_windows:]][:, : p.sample_len]
        log.warning("adapruner: the objective windows come from the train dataloader and may reach fine-tuning; "
                    "give your datamodule a pruning_data() method to keep them out")
        return DataSplits(pool=pool, pool_ids=[f"train:{int(i)}" for i in order[s.objective_windows:]],
                          objective=objective, objective_ids=[f"train:{int(i)}" for i in order[: s.objective_windows]],
                          finetune_ids=[])

    def _train_rows(self, trainer: Trainer, pl_module: LightningModule, needed: int) -> torch.Tensor:
        source = trainer.datamodule if trainer.datamodule is not None else pl_module
        if trainer.datamodule is not None:
            trainer.datamodule.prepare_data()
            trainer.datamodule.setup("fit")
        loader = source.train_dataloader()
        rows: list[torch.Tensor] = []
        for batch in loader:
            ids = batch["input_ids"] if isinstance(batch, dict) else batch[0]
            rows += list(ids)
            if len(rows) >= needed:
                break
        if len(rows) < max(needed, 2):
            raise ConfigError("train dataloader", f"{len(rows)} samples", f"at least {needed} (pool + objective)",
                              hint="lower search.pool_size / objective_windows or provide more data")
        return torch.stack(rows[:needed])

    def _search(self, trainer: Trainer, pl_module: LightningModule, model: nn.Module) -> dict[str, Any]:
        from adapruner_lightning.pruner import PruningSession, check_model
        from adapruner_lightning.search import run_search

        check_model(model, needs_gradients=True)
        tokenizer = getattr(pl_module, "tokenizer", None)
        device = trainer.strategy.root_device
        model.to(device)
        if self.eval_texts:
            self._evaluate("dense", model, tokenizer)
        splits = self.pruning_data(trainer, pl_module, tokenizer)
        session = PruningSession(model, self.pruning, splits.pool.to(device), objective=splits.objective.to(device),
                                 pool_ids=splits.pool_ids, progress=self.progress)
        out_dir = self._out_dir(trainer)
        start = time.perf_counter()
        if self.search.trials > 0:
            with trainer.precision_plugin.forward_context():
                result = run_search(session, self.search, trace_path=out_dir / "search_trace.jsonl", progress=self.progress)
            plan, trace = result.plan, result.trace()
        else:
            plan, trace = session.plan(session.default_candidate()), []
        session.release()
        return {"plan": plan.to_dict(), "trace": trace, "report": {"search_seconds": time.perf_counter() - start}}

    def _prune(self, trainer: Trainer, pl_module: LightningModule, attr: str, model: nn.Module, plan: PruningPlan) -> None:
        from adapruner_lightning.prune import apply_plan

        before = total_params(model)
        apply_plan(model, plan)
        self.plan, self._applied = plan, True
        self.report["params"] = {"before": before, "after": total_params(model), "removed_ratio": 1 - total_params(model) / before}
        if self.eval_texts and trainer.is_global_zero:
            model.to(trainer.strategy.root_device)
            self._evaluate("pruned", model, getattr(pl_module, "tokenizer", None))
        setattr(pl_module, attr, wrap_for_recovery(model, self.recovery))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        rank_zero_info(f"adapruner: {before:,} -> {total_params(model):,} parameters "
                       f"({self.report['params']['removed_ratio']:.1%} removed)")

    def _evaluate(self, stage: str, model: nn.Module, tokenizer: Any) -> None:
        from adapruner_lightning.data import texts_for
        from adapruner_lightning.evaluation import evaluate_model
        from adapruner_lightning.report import flatten_eval

        if tokenizer is None:
            raise ConfigError("eval_texts", self.eval_texts, "a LightningModule with a .tokenizer attribute",
                              hint="set module.tokenizer or drop eval_texts")
        start = time.perf_counter()
        result = evaluate_model(model, tokenizer, texts_for(self.eval_texts), tasks=self.eval_tasks,
                                max_tokens=self.eval_max_tokens, n_items=self.eval_items, progress=self.progress)
        self.report["quality"][stage] = flatten_eval(result)
        self.report["seconds"][f"eval_{stage}"] = time.perf_counter() - start

    def _out_dir(self, trainer: Trainer) -> Path:
        path = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir) / "adapruner"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_started = time.perf_counter()

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.plan is None:
            return
        self.report["seconds"]["fine_tune"] = time.perf_counter() - getattr(self, "_fit_started", time.perf_counter())
        attr, model = self._wrapped_model(pl_module)
        with _gathered(model):  # ZeRO-3: every rank joins the gather, rank 0 merges, evaluates and exports
            if self.recovery.mode == "lora" and self.recovery.merge_on_end:
                model = unwrap(model, merge=True)
                setattr(pl_module, attr, model)
            if trainer.is_global_zero:
                tokenizer = getattr(pl_module, "tokenizer", None)
                if self.eval_texts:
                    self._evaluate("recovered", model, tokenizer)
                self._write_outputs(self._out_dir(trainer), model, tokenizer)

    def _wrapped_model(self, pl_module: LightningModule) -> tuple[str, nn.Module]:
        if self.model_attr:
            return self.model_attr, getattr(pl_module, self.model_attr)
        from peft import PeftModel
        from transformers import PreTrainedModel

        for name, child in pl_module.named_children():
            if isinstance(child, (PreTrainedModel, PeftModel)):
                return name, child
        raise AdaPrunerError("the pruned model is no longer an attribute of the LightningModule")

    def _write_outputs(self, out_dir: Path, model: nn.Module, tokenizer: Any) -> None:
        from adapruner_lightning.report import plot_search, write_report

        plot = plot_search(self.trace, self.plan, out_dir / "search_trace.png") if self.trace else None
        self.report["plan_summary"] = {"provenance": {k: v for k, v in self.plan.provenance.items() if k != "versions"},
                                       "achieved_ratio": self.plan.achieved_ratio, "uniform": self.plan.is_uniform}
        self.report["files"] = {"plot": str(plot) if plot else None}
        if self.export and not hasattr(model, "peft_config"):
            from adapruner_lightning.export import save_pruned

            start = time.perf_counter()
            save_pruned(model, tokenizer, out_dir / "pruned_model", self.plan)
            self.report["seconds"]["export"] = time.perf_counter() - start
            self.report["files"]["model"] = str(out_dir / "pruned_model")
        self.plan.save(out_dir / PLAN_FILE)
        json_path, md_path = write_report(out_dir, self.report)
        rank_zero_info(f"adapruner: report written to {md_path}")

    # ------------------------------------------------------------------ state

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.plan is not None and trainer.is_global_zero and trainer.checkpoint_callback is not None:
            dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
            if dirpath:
                Path(dirpath).mkdir(parents=True, exist_ok=True)
                self.plan.save(Path(dirpath) / PLAN_FILE)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "plan": self.plan.to_dict() if self.plan else None, "trace": self.trace}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("version", 1) > STATE_VERSION:
            raise ConfigError("checkpoint callback state", state_dict.get("version"), f"<= {STATE_VERSION}")
        self.trace = list(state_dict.get("trace", []))
        if state_dict.get("plan") and self.plan is None:
            self.plan = PruningPlan.from_dict(state_dict["plan"])
