"""User set-ups the callback must work with: a model created in ``configure_model()``, a ``torch.compile``d
model, gradient accumulation (real fits of the tiny Llama on the CPU)."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from transformers import AutoModelForCausalLM

from adapruner_lightning import AdaPrunerCallback, TextDataModule
from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.groups import total_params
from adapruner_lightning.lightning.recovery import RecoveryConfig
from adapruner_lightning.search.config import SearchConfig
from helpers_core import SMALL_SEARCH


class UserModule(LightningModule):
    """A user's own module: the HF model made in ``__init__``, in ``configure_model`` (``late``), compiled or not."""

    def __init__(self, model_dir, late: bool = False, compiled: bool = False) -> None:
        super().__init__()
        self.model_dir, self.compiled, self.created = model_dir, compiled, 0
        self.model = None if late else self._make()

    def _make(self):
        self.created += 1
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).train()
        return torch.compile(model, backend="eager") if self.compiled else model

    def configure_model(self) -> None:
        if self.model is None:  # idempotent, as Lightning asks of configure_model
            self.model = self._make()

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch["input_ids"], labels=batch["input_ids"], use_cache=False).loss

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-3)


class Seen(Callback):
    """What training ran on: the module's model type, parameter count, batches and optimizer steps."""

    def __init__(self) -> None:
        self.batches, self.model_type, self.params = 0, None, None

    def on_train_start(self, trainer, pl_module) -> None:
        self.model_type = type(pl_module.model).__name__
        self.params = total_params(getattr(pl_module.model, "_orig_mod", pl_module.model))
        self.weights = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1


def _fit(tmp_path, tiny_lm_dir, text_dir, module, **trainer_kw):
    pruner = AdaPrunerCallback(target_ratio=0.2, search=SearchConfig.of(**{**SMALL_SEARCH, "trials": 2}),
                               pruning=PruningConfig(sample_len=32), recovery=RecoveryConfig(mode="full"),
                               output_dir=str(tmp_path / "out"), progress=False)
    seen = Seen()
    trainer = Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                      num_sanity_val_steps=0, default_root_dir=str(tmp_path), callbacks=[pruner, seen], **trainer_kw)
    data = TextDataModule(model=str(tiny_lm_dir), texts=[str(text_dir)], seq_len=32, batch_size=2, val_windows=2)
    dense = total_params(AutoModelForCausalLM.from_pretrained(tiny_lm_dir))
    trainer.fit(module, datamodule=data)
    return trainer, pruner, seen, dense


def test_a_model_created_in_configure_model_is_pruned_once(tmp_path, tiny_lm_dir, text_dir):
    module = UserModule(tiny_lm_dir, late=True)
    trainer, pruner, seen, dense = _fit(tmp_path, tiny_lm_dir, text_dir, module)
    assert module.created == 1  # the callback's call and Lightning's own: one model
    assert pruner.plan is not None and abs(seen.params / dense - 0.8) < 0.01
    assert trainer.global_step == 2 and total_params(module.model) == seen.params


def test_a_compiled_model_is_pruned_and_trains_compiled(tmp_path, tiny_lm_dir, text_dir):
    module = UserModule(tiny_lm_dir, compiled=True)
    trainer, pruner, seen, dense = _fit(tmp_path, tiny_lm_dir, text_dir, module)
    assert seen.model_type == "OptimizedModule"  # the user's compile wrapper kept, around the pruned model
    assert abs(seen.params / dense - 0.8) < 0.01 and trainer.global_step == 2
    moved = [n for n, p in module.model.named_parameters() if not torch.equal(p.detach(), seen.weights[n])]
    assert len(moved) == len(seen.weights)


def test_gradient_accumulation(tmp_path, tiny_lm_dir, text_dir):
    module = UserModule(tiny_lm_dir)
    trainer, pruner, seen, dense = _fit(tmp_path, tiny_lm_dir, text_dir, module, accumulate_grad_batches=2)
    assert trainer.global_step == 2 and seen.batches == 4
    assert abs(total_params(module.model) / dense - 0.8) < 0.01
    moved = [n for n, p in module.model.named_parameters() if not torch.equal(p.detach(), seen.weights[n])]
    assert len(moved) == len(seen.weights)
