"""Add AdaPrunerCallback to a Trainer you already have: your own LightningModule and data, one extra callback.

    python examples/callback_in_your_trainer.py            # embedded SmolLM2-135M + Austen text, CPU, a few minutes
    python examples/callback_in_your_trainer.py --model DIR --text FILE_OR_DIR --seq-len 64 --steps 2   # any model

The callback finds the single PreTrainedModel attribute of the module, searches and prunes 20% in setup(),
and the same fit then fine-tunes the pruned model with LoRA.
"""

from __future__ import annotations

import argparse

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch.utils.data import DataLoader

from adapruner_lightning import AdaPrunerCallback, PruningConfig, SearchConfig
from adapruner_lightning.data.text import texts_for, tokenize_windows
from adapruner_lightning.data.models import load_model


class MyModule(LightningModule):
    """A user's own module: any LightningModule holding one Hugging Face causal LM works."""

    def __init__(self, model: str | None = None) -> None:
        super().__init__()
        self.lm, self.tokenizer = load_model(model)  # None: the embedded SmolLM2; use your own model here

    def training_step(self, batch, batch_idx):
        return self.lm(input_ids=batch["input_ids"], labels=batch["input_ids"], use_cache=False).loss

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=2e-4)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="HF model dir or .gguf (default: the embedded SmolLM2-135M)")
    parser.add_argument("--text", default="austen:Emma", help="training text: a file, a directory or austen:<Title>")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    seed_everything(0)  # the loader below shuffles, and the callback takes its calibration rows from it
    module = MyModule(args.model)
    text = "\n\n".join(texts_for(args.text).values())
    windows = tokenize_windows(module.tokenizer, text, args.seq_len, max_windows=200)
    loader = DataLoader([{"input_ids": w} for w in windows], batch_size=4, shuffle=True)
    pruner = AdaPrunerCallback(target_ratio=0.2, search=SearchConfig.of(trials=6, init_points=3, pool_size=32),
                               pruning=PruningConfig(sample_len=min(128, args.seq_len)))
    trainer = Trainer(max_steps=args.steps, accelerator="auto", devices=1, logger=False, callbacks=[pruner],
                      default_root_dir="runs/callback_example")
    trainer.fit(module, train_dataloaders=loader)  # calibration/objective come from this loader (seeded slices)
    print(f"removed {pruner.plan.achieved_ratio:.1%} of the parameters; metric {pruner.plan.provenance['metric']}")


if __name__ == "__main__":
    main()
