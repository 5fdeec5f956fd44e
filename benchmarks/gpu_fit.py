"""GPU check: a >= 1 B-parameter random Llama in bf16 through AdaPrunerCallback under Lightning's DeepSpeedStrategy
(ZeRO-2, one GPU): search, prune, LoRA fine-tune, evaluation, export and reload, with peak GPU memory and phase
times.

The model is a randomly initialised ``LlamaForCausalLM`` (hidden 2048, MLP 8192, 32 heads / 8 KV heads, vocab
32000, 16 layers: 1.1 B parameters) made directly on the GPU in bf16; the text is generated pseudo-English and the
tokenizer a byte-level BPE trained on it in a second, so nothing is downloaded. Quality numbers of a random model
mean nothing; this checks the path and measures memory and time at a real size. Peak memory is
``torch.cuda.max_memory_allocated``, reset at the start of each phase (setup: dense evaluation, search, pruning;
fine-tune; end of fit: merge, evaluation, export).

Results: ``<out-dir>/gpu_fit.{md,json}``.

Usage::

    python benchmarks/gpu_fit.py                 # 16 layers, 20 LoRA steps (about 3 min on one H200)
    python benchmarks/gpu_fit.py --layers 8 --steps 5
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WORDS = ("the of and to a in that was her it his he she with had for not as be you at by on him which my all this "
         "so have but were could would from said very no one an they there been more what their when much must if "
         "only such any some than own time should herself mrs miss sister mother letter house day little think").split()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="LoRA recovery steps")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--smoke", action="store_true",
                   help="the same path on the CPU with a tiny model and Lightning's default strategy (a test of the script)")
    args = p.parse_args(argv)
    if args.smoke:
        args.layers, args.steps, args.trials, args.seq_len, args.batch_size = 8, 2, 2, 64, 2
    return args


def pseudo_text(n_words: int, seed: int) -> str:
    """Seeded pseudo-English (sentences of common words)."""
    rng = random.Random(seed)
    sentences, count = [], 0
    while count < n_words:
        sentence = [rng.choice(WORDS) for _ in range(rng.randint(6, 20))]
        sentences.append(" ".join(sentence).capitalize() + ".")
        count += len(sentence)
    return " ".join(sentences)


def build(args: argparse.Namespace, work: Path) -> tuple[Any, Path]:
    """The random bf16 Llama (on the GPU) and a directory with its config, tokenizer and text files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    (work / "train").mkdir(parents=True)
    for i in range(4):
        (work / "train" / f"part{i}.txt").write_text(pseudo_text(120_000, seed=i))
    (work / "eval.txt").write_text(pseudo_text(20_000, seed=99))
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    backend.train_from_iterator([(work / "eval.txt").read_text()], trainer=trainers.BpeTrainer(
        vocab_size=4096, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>")
    width = dict(hidden_size=128, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=len(tokenizer)) if args.smoke else \
        dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8, vocab_size=32000)
    config = LlamaConfig(num_hidden_layers=args.layers, max_position_embeddings=4096, **width,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cpu" if args.smoke else "cuda"):
        model = LlamaForCausalLM._from_config(config, dtype=torch.float32 if args.smoke else torch.bfloat16)
    model_dir = work / "model"
    config.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model.train(), model_dir


def peak_gb() -> float:
    """Peak CUDA memory since the last reset, in GB (0 on the CPU smoke run)."""
    return torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else 0.0


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


class PhaseMemory(Callback):
    """Peak GPU memory of setup (dense evaluation, search, pruning) and of the fine-tune.

    Listed before the pruner (its ``on_train_end`` must read the fine-tune's peak before the pruner's own merges
    and exports); the setup peak is read by :class:`SetupPeak`, listed after it."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}

    def on_fit_start(self, trainer, pl_module) -> None:
        reset_peak()

    def on_train_end(self, trainer, pl_module) -> None:  # before the pruner's own (listed first)
        self.peaks["fine-tune (GB)"] = peak_gb()
        reset_peak()


class SetupPeak(Callback):
    """Reads the setup peak right after the pruner's ``setup`` (listed after it), before the strategy is set up:
    DeepSpeed's ZeRO optimizer resets CUDA's peak counters when it is built (``deepspeed.runtime.utils.empty_cache``),
    so a reading at ``on_fit_start`` would miss the search (the first GPU check read 1.82 GB that way)."""

    def __init__(self, phases: PhaseMemory) -> None:
        self.phases = phases

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.phases.peaks["setup: dense eval, search, prune (GB)"] = peak_gb()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke:
        print("gpu_fit: no CUDA device (--smoke runs the same path on the CPU)", file=sys.stderr)
        return 2
    from lightning.pytorch import Trainer
    from lightning.pytorch.strategies import DeepSpeedStrategy
    from transformers import AutoTokenizer

    from adapruner_lightning import AdaPrunerCallback, CausalLMModule, EvalConfig, TextDataModule
    from adapruner_lightning.core.config import PruningConfig
    from adapruner_lightning.outputs.export import load_pruned
    from adapruner_lightning.core.groups import total_params
    from adapruner_lightning.lightning.recovery import RecoveryConfig
    from adapruner_lightning.search.config import SearchConfig

    args.out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_fit_"))
    start = time.perf_counter()
    model, model_dir = build(args, work)
    build_s, dense_params = time.perf_counter() - start, total_params(model)
    module = CausalLMModule(model=model, lr=1e-4)
    module.tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = TextDataModule(model=str(model_dir), texts=[str(work / "train")], seq_len=args.seq_len,
                          batch_size=args.batch_size, val_windows=4)
    pruner = AdaPrunerCallback(target_ratio=0.2, search=SearchConfig.of(trials=args.trials, init_points=2, pool_size=32,
                                                                        objective_windows=4,
                                                                        objective_seq_len=args.seq_len),
                               pruning=PruningConfig(sample_len=args.seq_len, num_samples=8),
                               recovery=RecoveryConfig(mode="lora"),
                               output_dir=str(work / "out"), export=True,
                               eval=EvalConfig(texts=[str(work / "eval.txt")], max_tokens=8192), progress=False)
    phases = PhaseMemory()
    strategy = "auto" if args.smoke else DeepSpeedStrategy(config={
        "zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": args.batch_size,
        "zero_allow_untested_optimizer": True})
    trainer = Trainer(accelerator="cpu" if args.smoke else "gpu", devices=1, strategy=strategy,
                      precision="32-true" if args.smoke else "bf16-true", max_steps=args.steps,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                      num_sanity_val_steps=0, default_root_dir=str(work), callbacks=[phases, pruner, SetupPeak(phases)])
    reset_peak()
    fit_start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    fit_s = time.perf_counter() - fit_start
    phases.peaks["end of fit: merge, eval, export (GB)"] = peak_gb()
    reload_start = time.perf_counter()
    reloaded, _, plan = load_pruned(work / "out" / "adapruner" / "pruned_model", device="cpu" if args.smoke else "cuda")
    reload_s = time.perf_counter() - reload_start
    result = {"layers": args.layers, "dense_params": dense_params, "pruned_params": total_params(reloaded),
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (smoke)", "torch": torch.__version__, "build_seconds": build_s,
              "fit_seconds": fit_s, "reload_seconds": reload_s, "phase_seconds": pruner.report["seconds"],
              "peak_gpu_memory": phases.peaks, "weights_gb": dense_params * 2 / 1e9,
              "quality": pruner.report["quality"], "plan_layers_equal": plan.layers == pruner.plan.layers}
    name = "gpu_fit_smoke" if args.smoke else "gpu_fit"
    (args.out_dir / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
    lines = [f"# GPU fit check: {dense_params / 1e9:.2f} B random Llama, bf16, DeepSpeed ZeRO-2, 1 GPU ({result['gpu']})",
             "", "| measure | value |", "|---|---|",
             f"| parameters dense -> pruned | {dense_params:,} -> {result['pruned_params']:,} |",
             *[f"| peak {k} | {v:.2f} |" for k, v in phases.peaks.items()],
             f"| dense bf16 weights (GB) | {result['weights_gb']:.2f} |",
             *[f"| {k} s | {v:.1f} |" for k, v in pruner.report["seconds"].items()],
             f"| fit s | {fit_s:.1f} |", f"| reload s | {reload_s:.1f} |",
             f"| export reloads with the plan's shapes | {result['plan_layers_equal']} |"]
    (args.out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
