"""Add AdaPrunerCallback to a Trainer you already have: your own LightningModule and data, one extra callback.

    python examples/callback_in_your_trainer.py            # embedded SmolLM2-135M + Austen text, CPU, a few minutes

The callback finds the single PreTrainedModel attribute of the module, searches and prunes 20% in setup(),
and the same fit then fine-tunes the pruned model with LoRA.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader

from adapruner_lightning import AdaPrunerCallback, SearchConfig
from adapruner_lightning.data.text import texts_for, tokenize_windows
from adapruner_lightning.data.models import load_model


class MyModule(LightningModule):
    """A user's own module: any LightningModule holding one Hugging Face causal LM works."""

    def __init__(self) -> None:
        super().__init__()
        self.lm, self.tokenizer = load_model(None)  # the embedded SmolLM2; use your own model here

    def training_step(self, batch, batch_idx):
        return self.lm(input_ids=batch["input_ids"], labels=batch["input_ids"], use_cache=False).loss

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=2e-4)


def main() -> None:
    module = MyModule()
    text = texts_for("austen:Emma")["Emma"]
    windows = tokenize_windows(module.tokenizer, text, 256, max_windows=200)
    loader = DataLoader([{"input_ids": w} for w in windows], batch_size=4, shuffle=True)
    pruner = AdaPrunerCallback(target_ratio=0.2, search=SearchConfig.of(trials=6, init_points=3, pool_size=32))
    trainer = Trainer(max_steps=10, accelerator="auto", devices=1, logger=False, callbacks=[pruner])
    trainer.fit(module, train_dataloaders=loader)  # calibration/objective come from this loader (seeded slices)
    print(f"removed {pruner.plan.achieved_ratio:.1%} of the parameters; metric {pruner.plan.provenance['metric']}")


if __name__ == "__main__":
    main()
