"""Standalone: a 2-process DDP fit (gloo, CPU) of a user's own LightningModule with the callback's defaults.

Nothing is configured but ``AdaPrunerCallback(target_ratio=0.2)``: no output_dir (the trainer's log dir is
used, whose lookup is itself a collective), the default search, the default logger. The module holds a tiny
HF Llama and either defines ``train_dataloader`` (mode ``module``) or gets its loader through
``trainer.fit(module, train_dataloaders=loader)`` (mode ``loader``). Each rank writes ``<out>/rank{r}.json``.

Usage: python ddp_defaults.py MODEL_DIR OUT_DIR {module,loader}
"""

from __future__ import annotations

import hashlib
import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, TensorDataset
from transformers import AutoModelForCausalLM

from adapruner_lightning import AdaPrunerCallback

ROWS, SEQ = 80, 160


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()[:16]


def loader(vocab: int) -> DataLoader:
    ids = torch.randint(0, vocab, (ROWS, SEQ), generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(ids), batch_size=4)


class UserModule(LightningModule):
    """What a user writes: an HF model attribute, a loss, an optimizer (and maybe a loader)."""

    def __init__(self, model_dir: str, with_loader: bool) -> None:
        super().__init__()
        self.lm = AutoModelForCausalLM.from_pretrained(model_dir)
        self.with_loader = with_loader

    def training_step(self, batch, batch_idx):
        ids = batch[0]
        return self.lm(input_ids=ids, labels=ids, use_cache=False).loss

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-3)


class WithLoader(UserModule):
    def train_dataloader(self):
        return loader(self.lm.config.vocab_size)


def main() -> None:
    model_dir, out, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    pruner = AdaPrunerCallback(target_ratio=0.2)
    trainer = Trainer(accelerator="cpu", devices=2, max_steps=2, default_root_dir=str(out), callbacks=[pruner],
                      strategy=DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=120)),
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      use_distributed_sampler=False)
    if mode == "module":
        module = WithLoader(model_dir, True)
        trainer.fit(module)
    else:
        module = UserModule(model_dir, False)
        trainer.fit(module, train_dataloaders=loader(module.lm.config.vocab_size))
    params = {n: digest(p) for n, p in module.named_parameters()}
    record = {"rank": trainer.global_rank, "plan": pruner.plan.to_dict(), "params": params,
              "global_step": trainer.global_step, "report_dir": str(pruner._out_dir(trainer))}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
    print(f"[rank {trainer.global_rank}] DDP_DEFAULTS_OK", flush=True)


if __name__ == "__main__":
    main()
