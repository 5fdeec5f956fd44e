"""A ready LightningModule for causal-LM fine-tuning (users may bring their own)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule

from adapruner_lightning.evaluation.metrics import Perplexity
from adapruner_lightning.lightning.distillation import recovery_loss
from adapruner_lightning.lightning.planning import find_state, has_adapters, restore_shape


class CausalLMModule(LightningModule):
    """Fine-tunes a Hugging Face causal LM on batches with ``input_ids`` (and optional ``labels``/``attention_mask``).

    Args:
        model: a model spec for :func:`adapruner_lightning.data.models.load_model` (None: the embedded SmolLM2),
            or an already loaded ``PreTrainedModel``.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps.
        dtype: parameter dtype when ``model`` is a spec: ``float32`` (default, the CPU demo), ``bfloat16`` (7-8B
            models on GPUs: 2 bytes a parameter; the GPU recipes use it), ``float16``. Never changed afterwards.
        attn_implementation: transformers' attention kernel (``sdpa``, ``eager``, ``flash_attention_2``; None:
            its default).
        gradient_checkpointing: recompute activations in the backward pass of the recovery fine-tune (less
            memory, about a third more compute; the search's statistics passes run in eval mode, unaffected).

    Example::

        module = CausalLMModule(model="path/to/hf_dir", lr=1e-4, dtype="bfloat16", gradient_checkpointing=True)
        trainer = Trainer(callbacks=[AdaPrunerCallback(target_ratio=0.2)])
        trainer.fit(module, datamodule=TextDataModule(model="path/to/hf_dir"))
    """

    def __init__(self, model: Any = None, lr: float = 1e-4, weight_decay: float = 0.0, warmup_steps: int = 0,
                 dtype: str = "float32", attn_implementation: Optional[str] = None,
                 gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"] if not isinstance(model, (str, type(None))) else [])
        if isinstance(model, (str, type(None))):
            from adapruner_lightning.data.models import load_model

            model, self.tokenizer = load_model(model, dtype=dtype, attn_implementation=attn_implementation)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = model.train()
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.val_ppl = Perplexity()
        self.test_ppl = Perplexity()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        """Run the wrapped model (``use_cache=False``)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False)

    @staticmethod
    def _labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch.get("labels")
        if labels is None:
            labels = batch["input_ids"].clone()
            if "attention_mask" in batch:
                labels[batch["attention_mask"] == 0] = -100
        return labels

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Next-token loss, or the distillation loss when the callback distils (:func:`recovery_loss`); logged as
        ``train_loss``."""
        out = self(batch["input_ids"], batch.get("attention_mask"), self._labels(batch))
        loss = recovery_loss(self, batch, out)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, sync_dist=False)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Accumulates validation perplexity from summed NLL and token counts (no logits kept)."""
        out = self(batch["input_ids"], batch.get("attention_mask"))
        self.val_ppl.update(out.logits, self._labels(batch))
        self.log("val_ppl", self.val_ppl, prog_bar=True, on_step=False, on_epoch=True)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Test perplexity, as :meth:`validation_step` (logged as ``test_ppl``)."""
        out = self(batch["input_ids"], batch.get("attention_mask"))
        self.test_ppl.update(out.logits, self._labels(batch))
        self.log("test_ppl", self.test_ppl, on_step=False, on_epoch=True)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild the pruned (and LoRA-wrapped) shape a checkpoint of a pruned run stores before its weights load,
        so ``CausalLMModule.load_from_checkpoint(path)`` and ``trainer.test(module, ckpt_path=...)`` work."""
        state = find_state(checkpoint)
        if state is not None:
            self.model = restore_shape(self.model, state, adapters=has_adapters(checkpoint))

    def configure_optimizers(self):
        """AdamW over the trainable parameters (after pruning and LoRA wrapping), with linear warm-up."""
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        if not self.warmup_steps:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / self.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
