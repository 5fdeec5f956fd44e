"""AdaPrunerCallback: search, prune and set up recovery inside ``Trainer.fit``; hooks only.

All pruning happens in ``setup(stage="fit")``: the device is known, while optimizers and the strategy's
wrapper (DDP / DeepSpeed engine) do not exist yet (``_compat``). The plan comes from ``planning``: replayed
from the checkpoint being resumed or a plan file, else searched by every rank together (each scoring its share of
the trials), so every rank prunes identically. The rest of ``fit`` is the recovery fine-tune (``recovery``); the end of fit merges, evaluates and
writes the report and export (``report``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from adapruner_lightning.config import check_fraction
from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.groups import total_params
from adapruner_lightning.outputs import gguf as gguf_export
from adapruner_lightning.core.physical import apply_plan
from adapruner_lightning.core.plan import PruningPlan
from adapruner_lightning.core.reconstruction import LeastSquares
from adapruner_lightning.core.session import check_model
from adapruner_lightning.data.calibration import DataSplits
from adapruner_lightning.errors import AdaPrunerError, ConfigError
from adapruner_lightning.evaluation.config import EvalConfig
from adapruner_lightning.lightning import _compat, planning
from adapruner_lightning.lightning.distillation import DistillationConfig, Teacher, attach_teacher
from adapruner_lightning.lightning.recovery import RecoveryConfig, check_lora_targets, unwrap, wrap_for_recovery
from adapruner_lightning.outputs.report import evaluate_stage, write_outputs
from adapruner_lightning.lightning.planning import claim_fit_outputs, release_fit_outputs
from adapruner_lightning.lightning.tracking import ValidationTasks
from adapruner_lightning.search.config import SearchConfig

log = logging.getLogger(__name__)
STATE_VERSION = 1


#: the callback's 0.2 evaluation options, refused with their new spelling (``eval=EvalConfig(...)``)
RENAMED_OPTIONS: dict[str, str] = {"eval_texts": "eval.texts", "eval_tasks": "eval.tasks",
                                   "eval_max_tokens": "eval.max_tokens", "eval_items": "eval.items",
                                   "val_tasks": "eval.val_tasks", "val_items": "eval.val_items"}


class AdaPrunerCallback(Callback):
    """Prune the Hugging Face causal LM inside a LightningModule at the start of ``fit``; fit then recovers it.

    Args:
        target_ratio: fraction of parameters to remove; None (default): ``pruning.target_ratio``. Given, it takes
            precedence over the pruning config's default ratio; a pruning config that sets another ratio itself is
            refused as ambiguous.
        pruning: pruning options (target ratio, metric when not searching, basis, schedule, round_to ...).
        search: search options (default: ``SearchConfig()``); ``SearchConfig(trials=0)`` prunes with ``pruning``
            as given.
        recovery: LoRA / full / no fine-tuning after pruning.
        plan: path to a ``pruning_plan.json`` to apply instead of searching (``target_ratio`` must then be None).
        model_attr: attribute of the LightningModule holding the HF model (auto-detected when None).
        output_dir: where the report, search trace, plot and export go (default: the trainer's log dir), in its
            ``adapruner/`` folder; checked in ``setup``, before the search: neither the model's own directory nor
            one above it, and its ``pruned_model`` export replaces only an export of ours. Rank 0 holds its writer
            lock for the fit (a second job on it is refused, naming this one).
        export: save the pruned (and merged) model at the end of fit, with its model card (``README.md``).
        gguf: also write ``pruned_model.gguf`` for llama.cpp in this type (``f32``, ``f16``, ``bf16``, ``q8_0``;
            :mod:`~adapruner_lightning.outputs.gguf`); what the format cannot express is refused in ``setup``,
            before the search (family, tokenizer) or right after pruning (the plan), never after the fine-tune.
        eval: held-out evaluation (:class:`~adapruner_lightning.evaluation.config.EvalConfig`): the report's
            dense / pruned / recovered quality and the zero-shot accuracy logged at every validation as
            ``val/acc/<task>``; None: ``EvalConfig()``, no evaluation.
        distillation: recover by distilling the dense model (frozen as it was just before pruning) into the pruned
            one (:class:`~adapruner_lightning.lightning.distillation.DistillationConfig`); the LightningModule's
            ``training_step`` returns ``recovery_loss(self, batch, outputs)`` (``CausalLMModule`` does). None: the
            module's own loss. The teacher costs one more copy of the dense model (in ``teacher_dtype``, on
            ``teacher_device``) and one teacher forward per step.
        progress: show progress bars.
        **removed: the 0.2 flat evaluation names (``eval_texts`` ...), refused with their ``eval.*`` spelling.

    Raises:
        ConfigError: on any invalid argument or combination, at construction.

    Example::

        trainer = Trainer(max_steps=100, callbacks=[AdaPrunerCallback(target_ratio=0.2)])
        trainer.fit(module, datamodule=datamodule)
    """

    def __init__(self, target_ratio: Optional[float] = None, pruning: Optional[PruningConfig] = None,
                 search: Optional[SearchConfig] = None, recovery: Optional[RecoveryConfig] = None,
                 plan: Optional[str] = None, model_attr: Optional[str] = None, output_dir: Optional[str] = None,
                 export: bool = True, eval: Optional[EvalConfig] = None,
                 distillation: Optional[DistillationConfig] = None, gguf: Optional[str] = None,
                 progress: bool = True, **removed: Any) -> None:
        super().__init__()
        refuse_removed(removed)
        if plan is not None and target_ratio is not None:
            raise ConfigError("target_ratio", target_ratio, "None when an explicit plan is given",
                              hint="the plan fixes what is removed; pass target_ratio=None with plan=...")
        if plan is not None and not Path(plan).is_file():
            raise ConfigError("plan", plan, "an existing pruning_plan.json")
        self.pruning = _pruning_config(target_ratio, pruning)
        self.search = search if search is not None else SearchConfig()
        self.recovery = recovery or RecoveryConfig()
        self.plan_path, self.model_attr, self.output_dir = plan, model_attr, output_dir
        self.export, self.progress = export, progress
        self.gguf = gguf_export.check_outtype(gguf) if gguf is not None else None
        self.eval = eval if eval is not None else EvalConfig()
        self.distillation = distillation
        self.teacher: Teacher | None = None  # built in setup, from the dense model
        self._tracker: ValidationTasks | None = None
        self.plan: PruningPlan | None = None
        self.trace: list[dict[str, Any]] = []
        self.report: dict[str, Any] = {"quality": {}, "seconds": {}, "params": {}}
        self._applied = False
        self._plan_files: dict[Path, bool] = {}  # plan files beside the checkpoints: True = this run's to rewrite
        self._refit: LeastSquares | None = None  # a least-squares plan's statistics, from the search to the prune
        self._data_split = False  # whether this rank's datamodule already split off pool/objective windows
        self._out: Path | None = None
        self._requeue: _compat.RequeueHandler | None = None

    # ------------------------------------------------------------------ finding things in the user's objects

    def find_model(self, pl_module: LightningModule) -> tuple[str, nn.Module]:
        """The (attribute name, HF causal LM) inside ``pl_module``; override for unusual layouts. A model behind
        ``torch.compile`` is found through its wrapper (the compiled module is returned)."""
        from transformers import PreTrainedModel

        if self.model_attr is not None:
            model = getattr(pl_module, self.model_attr, None)
            if model is None:
                raise ConfigError("model_attr", self.model_attr, f"an attribute of {type(pl_module).__name__}")
            return self.model_attr, model
        found = [(n, m) for n, m in pl_module.named_children() if isinstance(_compat.uncompiled(m), PreTrainedModel)]
        if len(found) != 1:
            raise ConfigError("model_attr", None, f"exactly one PreTrainedModel child of {type(pl_module).__name__} "
                              f"(found {[n for n, _ in found]})",
                              hint="create the model in __init__ or configure_model() and pass "
                                   "model_attr='<attribute name>'")
        return found[0]

    def _model_to_prune(self, pl_module: LightningModule) -> tuple[str, nn.Module]:
        """:meth:`find_model`, after the module's ``configure_model()`` when the model does not exist yet."""
        try:
            return self.find_model(pl_module)
        except ConfigError:
            if not _compat.configure_model_early(pl_module):
                raise
            rank_zero_info("adapruner: called configure_model() in setup to create the model to prune "
                           "(whole on every rank; the pruned model is then sharded by the strategy)")
            return self.find_model(pl_module)

    # ------------------------------------------------------------------ hooks

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Obtain the plan (stored, or searched by every rank together) and prune, once. Outside ``fit``
        (``validate/test/predict(ckpt_path=...)``) only the plan stored in the checkpoint is replayed."""
        if self._applied:
            return
        if stage != "fit":
            self._replay_for_evaluation(trainer, pl_module)
            return
        _compat.check_strategy(trainer)
        _compat.check_before_wrap(trainer, pl_module)
        attr, found = self._model_to_prune(pl_module)
        model = _compat.uncompiled(found)  # pruned in place; a torch.compile wrapper is rebuilt around it
        check_lora_targets(model, self.recovery)
        if self.gguf:
            gguf_export.check_exportable(model, getattr(pl_module, "tokenizer", None))
        self._out_dir(trainer)  # every rank, before any rank-0-only work
        self._requeue = _compat.RequeueHandler.install(trainer)  # SLURM's requeue signal, search and fine-tune
        plan, from_checkpoint = self._stored_plan(trainer)
        started = time.perf_counter()
        if plan is None:
            plan = self._search_and_broadcast(trainer, pl_module, model)
        else:
            rank_zero_info(f"adapruner: replaying a stored plan ({plan.achieved_ratio:.1%} removed); no search")
            if plan.refits_weights and not from_checkpoint:
                self._refit = self._refit_from_data(trainer, pl_module, model, plan)
        if not self._data_split:
            self._exclude_objective_from_training(trainer)
        if self.distillation is not None:  # the dense model as it is now, before the plan is applied (also on resume)
            self.teacher = Teacher(model, self.distillation)
        attach_teacher(pl_module, self.teacher)  # recovery_loss(pl_module, ...) distils from it (None: the LM loss)
        self._prune(trainer, pl_module, attr, model, plan, wrapper=found, weights_follow=from_checkpoint)
        self.report["seconds"]["search_and_prune"] = time.perf_counter() - started

    def _checkpoint_state(self, trainer: Trainer) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The checkpoint being restored (memory-mapped) and this callback's state in it (None, None: none)."""
        checkpoint = planning.stored_checkpoint(trainer)
        return checkpoint, planning.find_state(checkpoint, type(self).__name__) if checkpoint is not None else None

    def _stored_plan(self, trainer: Trainer) -> tuple[PruningPlan | None, bool]:
        """The checkpoint's plan or the plan file's (None: search), and whether it came from the checkpoint."""
        _, state = self._checkpoint_state(trainer)
        if state is not None:
            self.trace = list(state.get("trace", []))
            return PruningPlan.from_dict(state["plan"]), True
        return planning.plan_from_file(self.plan_path), False

    def _refit_from_data(self, trainer: Trainer, pl_module: LightningModule, model: nn.Module,
                         plan: PruningPlan) -> LeastSquares:
        """A plan file's least-squares re-fit, from this run's calibration pool and reconstruction windows (which
        must be the plan's)."""
        collective = _compat.collective(trainer)
        splits = collective.run_on(0, lambda: self.pruning_data(trainer, pl_module, getattr(pl_module, "tokenizer", None)))
        model.to(trainer.strategy.root_device)
        return planning.refit_for_plan(model, plan, splits, device=trainer.strategy.root_device, collective=collective)

    def _replay_for_evaluation(self, trainer: Trainer, pl_module: LightningModule) -> None:
        checkpoint, state = self._checkpoint_state(trainer)
        if state is None:
            return
        attr, model = self.find_model(pl_module)
        setattr(pl_module, attr, planning.restore_shape(_compat.uncompiled(model), state, adapters=planning.has_adapters(checkpoint),
                                                        fallback=self.recovery))
        self.plan, self.trace, self._applied = PruningPlan.from_dict(state["plan"]), list(state.get("trace", [])), True
        rank_zero_info(f"adapruner: replaying the checkpoint's plan ({self.plan.achieved_ratio:.1%} removed)")

    def _exclude_objective_from_training(self, trainer: Trainer) -> None:
        """Ranks that did not compute the pruning data (they received rank 0's) and resumed runs split the
        datamodule's data the same way rank 0 did, so the objective windows stay out of fine-tuning on every rank."""
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "pruning_data"):
            self.pruning_data(trainer, None, None)

    def _search_and_broadcast(self, trainer: Trainer, pl_module: LightningModule, model: nn.Module) -> PruningPlan:
        """Every rank searches: rank 0's pruning data is broadcast, the statistics pass and the trials are split
        between the ranks, and every rank ends with the same plan and trace (a failure on one stops all)."""
        collective = _compat.collective(trainer)
        tokenizer = getattr(pl_module, "tokenizer", None)
        collective.together(lambda: self._prepare_dense(trainer, model, tokenizer))
        splits = collective.run_on(0, lambda: self.pruning_data(trainer, pl_module, tokenizer))
        found = planning.search_plan(model, splits, self.pruning, self.search, device=trainer.strategy.root_device,
                                     trace_path=self._out_dir(trainer) / "search_trace.jsonl",
                                     forward_context=_compat.statistics_context(trainer.precision_plugin),
                                     progress=self.progress and trainer.is_global_zero, collective=collective)
        self.trace = found.trace()
        self.report["search"] = found.summary()
        self.report["seconds"]["search"] = found.seconds
        self._refit = found.refit
        return found.plan

    def pruning_data(self, trainer: Trainer, pl_module: LightningModule | None, tokenizer: Any) -> DataSplits:
        """Calibration pool and objective windows: from the datamodule's ``pruning_data`` when it has one,
        else seeded disjoint slices of the train dataloader's ``input_ids``; override to supply your own."""
        splits, from_datamodule = planning.pruning_data(trainer, self.search, self.pruning)
        self._data_split = self._data_split or from_datamodule
        return splits

    def _prepare_dense(self, trainer: Trainer, model: nn.Module, tokenizer: Any) -> None:
        """Check the model, move it to this rank's device and evaluate it dense (when ``eval.texts``)."""
        check_model(model, needs_gradients=True)
        model.to(trainer.strategy.root_device)
        if self.eval.texts:
            self._evaluate("dense", model, tokenizer)

    def _prune(self, trainer: Trainer, pl_module: LightningModule, attr: str, model: nn.Module, plan: PruningPlan,
               wrapper: nn.Module | None = None, weights_follow: bool = False) -> None:
        before = total_params(model)
        apply_plan(model, plan, refit=self._refit, weights_follow=weights_follow)
        self._refit = None  # the pool's statistics are not needed any more
        if self.gguf:
            gguf_export.gguf_layout(model)  # a plan the format cannot express fails now, not after the fine-tune
        self.plan, self._applied = plan, True
        after = total_params(model)
        self.report["params"] = {"before": before, "after": after, "removed_ratio": 1 - after / before}
        if self.eval.texts:  # every rank (no rank idles in the next collective while rank 0 evaluates)
            model.to(trainer.strategy.root_device)
            _compat.collective(trainer).together(
                lambda: self._evaluate("pruned", model, getattr(pl_module, "tokenizer", None)))
        setattr(pl_module, attr, _compat.compiled_like(wrapper, wrap_for_recovery(model, self.recovery)))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        rank_zero_info(f"adapruner: {before:,} -> {after:,} parameters "  # the pruned model's own, adapters apart
                       f"({self.report['params']['removed_ratio']:.1%} removed)")

    def _evaluate(self, stage: str, model: nn.Module, tokenizer: Any) -> None:
        scores, seconds = evaluate_stage(model, tokenizer, self.eval, progress=self.progress)
        self.report["quality"][stage] = scores
        self.report["seconds"][f"eval_{stage}"] = seconds

    def _out_dir(self, trainer: Trainer) -> Path:
        """Where the report, trace and export go; resolved once, in ``setup``, on every rank (the trainer's
        ``log_dir`` is a collective: called on rank 0 alone it would pair with another rank's broadcast)."""
        if self._out is None:  # checked (no input model's directory, no user's files replaced) and locked by rank 0
            self._out = claim_fit_outputs(Path(self.output_dir or _compat.output_root(trainer)) / "adapruner",
                                          model=trainer.lightning_module, export=self.export, gguf=bool(self.gguf),
                                          lock=trainer.is_global_zero)
        return self._out

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the recovery fine-tune's clock; build the validation tasks' items (once)."""
        self._fit_started = time.perf_counter()
        if self.eval.tracked_tasks and self._tracker is None:
            from adapruner_lightning.data.text import texts_for

            texts = texts_for(self.eval.texts) if self.eval.texts else {}
            self._tracker = ValidationTasks(self.eval.tracked_tasks, texts, self.eval.val_items)

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Score the validation tasks on the model being fine-tuned; log ``val/acc/<task>`` (all ranks' items)."""
        if self._tracker is None or trainer.sanity_checking:
            return
        _, model = self._wrapped_model(pl_module)
        scores = self._tracker.score(model, getattr(pl_module, "tokenizer", None), rank=trainer.global_rank,
                                     world_size=trainer.world_size, every_item=_compat.is_partitioned(model))
        for key, value in scores.items():
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Merge LoRA, evaluate the recovered model and write the report and export (rank 0 writes).

        Here, not in ``on_fit_end``: Lightning's teardown, between the two, moves the module to the CPU and
        ends DeepSpeed's engine (``_compat``). Every rank merges and evaluates (under ZeRO-3 a forward needs
        every rank). Under ZeRO-3 the merge and the export each run inside a gather of the full weights, the
        evaluation outside one: DeepSpeed's forward hooks fetch and release parameters themselves, and a
        forward inside a gather would release the gathered weights before the export reads them.
        """
        if self.plan is None:
            return
        self.report["seconds"]["fine_tune"] = time.perf_counter() - getattr(self, "_fit_started", time.perf_counter())
        attr, model = self._wrapped_model(pl_module)
        if self.recovery.mode == "lora" and self.recovery.merge_on_end:
            with _compat.gathered(model, modifier_rank=0):
                model = unwrap(model, merge=True)
            setattr(pl_module, attr, model)
        tokenizer = getattr(pl_module, "tokenizer", None)
        if self.eval.texts:
            _compat.collective(trainer).together(lambda: self._evaluate("recovered", model, tokenizer))
        with _compat.gathered(model):
            if trainer.is_global_zero:
                md_path = write_outputs(self._out_dir(trainer), model, tokenizer, self.plan, self.trace, self.report,
                                        export=self.export, gguf=self.gguf)
                rank_zero_info(f"adapruner: report written to {md_path}")

    def _wrapped_model(self, pl_module: LightningModule) -> tuple[str, nn.Module]:
        """The (attribute, pruned model) at the end of fit: LoRA-wrapped or not, outside a compile wrapper."""
        if self.model_attr:
            return self.model_attr, _compat.uncompiled(getattr(pl_module, self.model_attr))
        from peft import PeftModel
        from transformers import PreTrainedModel

        for name, child in pl_module.named_children():
            if isinstance(_compat.uncompiled(child), (PreTrainedModel, PeftModel)):
                return name, _compat.uncompiled(child)
        raise AdaPrunerError("the pruned model is no longer an attribute of the LightningModule")

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        """Act on SLURM's requeue signal where every rank is at the same point (``_compat.RequeueHandler``)."""
        if self._requeue is not None:
            self._requeue.at_step_end()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Detach the teacher from the module at the end of ``fit`` (the callback keeps it as ``self.teacher``); give
        back the output directory's writer lock (rank 0) and the requeue signal's previous handler."""
        if stage == "fit":
            attach_teacher(pl_module, None)
        self._end()

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """As :meth:`teardown`: Lightning calls no ``teardown`` after an error."""
        self._end()

    def _end(self) -> None:
        release_fit_outputs(self._out)
        if self._requeue is not None:
            self._requeue.remove()
            self._requeue = None

    # ------------------------------------------------------------------ state

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Write ``pruning_plan.json`` beside the checkpoints (never over a file of another plan there)."""
        if self.plan is not None and trainer.is_global_zero and trainer.checkpoint_callback is not None:
            dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
            if dirpath:
                planning.save_plan_beside_checkpoints(self.plan, dirpath, self._plan_files)

    @override
    def state_dict(self) -> dict[str, Any]:
        """The plan and the search trace (a checkpoint of a pruned run resumes into the pruned shape)."""
        return {"version": STATE_VERSION, "plan": self.plan.to_dict() if self.plan else None, "trace": self.trace,
                "recovery": asdict(self.recovery)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the plan and trace; a newer state format is refused with a clear error."""
        if state_dict.get("version", 1) > STATE_VERSION:
            raise ConfigError("checkpoint callback state", state_dict.get("version"), f"<= {STATE_VERSION}")
        self.trace = list(state_dict.get("trace", []))
        if state_dict.get("plan") and self.plan is None:
            self.plan = PruningPlan.from_dict(state_dict["plan"])


def refuse_removed(removed: Iterable[str]) -> None:
    """Refuse options the callback does not take, naming the new spelling of the renamed ones
    (:data:`RENAMED_OPTIONS`); used for Python keywords and, by ``adapruner fit``, for YAML keys and flags."""
    for name in removed:
        if name in RENAMED_OPTIONS:
            new = RENAMED_OPTIONS[name]
            raise ConfigError("AdaPrunerCallback option", name, f"{new} (the evaluation options are one section)",
                              hint=f"pass eval=EvalConfig({new.split('.')[1]}=...); in YAML: adapruner: eval: "
                                   f"{{{new.split('.')[1]}: ...}}")
        raise ConfigError("AdaPrunerCallback option", name, "an argument of AdaPrunerCallback",
                          hint="see help(AdaPrunerCallback)")


def _pruning_config(target_ratio: float | None, pruning: PruningConfig | None) -> PruningConfig:
    """The pruning config with ``target_ratio`` applied (None: the config's own ratio). A config whose ratio was
    changed from the default and disagrees with ``target_ratio`` is refused: it is unclear which one is meant."""
    pruning = pruning if pruning is not None else PruningConfig()
    if target_ratio is None:
        return pruning
    check_fraction("target_ratio", target_ratio)
    default = PruningConfig.__dataclass_fields__["target_ratio"].default
    if pruning.target_ratio not in (default, target_ratio):
        raise ConfigError("target_ratio", target_ratio, f"None or pruning.target_ratio={pruning.target_ratio}",
                          hint="set the ratio in one place: target_ratio=... or pruning=PruningConfig(target_ratio=...)")
    return replace(pruning, target_ratio=target_ratio)
