"""Fine-tune an already pruned export on several GPUs (DDP or DeepSpeed), no search: the plan is replayed.

    python examples/finetune_pruned_export_multi_gpu.py runs/smollm2_default/adapruner/pruned_model --devices 8
"""

from __future__ import annotations

import argparse

from lightning.pytorch import Trainer

from adapruner_lightning import CausalLMModule, TextDataModule, load_pruned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("export_dir")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="ddp", help="ddp | deepspeed_stage_2 | deepspeed_stage_3 | auto")
    parser.add_argument("--text", default="austen:calibration", help="training text (files, directories, austen:)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    model, tokenizer, plan = load_pruned(args.export_dir)  # non-uniform shapes rebuilt from the plan
    module = CausalLMModule(model=model, lr=1e-4)
    module.tokenizer = tokenizer
    data = TextDataModule(model=args.export_dir, texts=[args.text], seq_len=args.seq_len, batch_size=4)
    trainer = Trainer(accelerator="auto", devices=args.devices, strategy=args.strategy, max_steps=args.steps,
                      default_root_dir="runs/finetune_example")
    trainer.fit(module, datamodule=data)


if __name__ == "__main__":
    main()
