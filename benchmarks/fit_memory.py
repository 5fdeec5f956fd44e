"""Peak memory and step time of the recovery fine-tune: pruned vs dense, same settings, side by side.

Each configuration runs in its own fresh process (so one run's peak cannot hide another's), one after the
other, with the embedded model, the recipe's data settings (calibration novels, 4 x 256-token batches) and the
same seed: ``dense`` fine-tunes the unpruned model; ``pruned`` adds ``AdaPrunerCallback(target_ratio)`` with
no search (``wanda_sp``, 10 samples) so that only the shapes differ. Both in LoRA mode (the recipe) and in full
fine-tuning (AdamW states for every weight). Memory is measured from ``on_train_start`` to ``on_train_end``
only (after pruning, so the statistics pass is not counted), with ``bench_common.PeakMemory``: on Linux CPUs the process
high-water mark (VmHWM, reset at train start after ``gc`` and ``malloc_trim``), on a GPU
``torch.cuda.max_memory_allocated`` (reset at train start).

    python benchmarks/fit_memory.py                # LoRA and full, 8 steps each (~5 min on 2 CPU cores)
    python benchmarks/fit_memory.py --modes full --steps 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_common

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _probe():
    """A Lightning callback measuring peak memory and step times of the training loop only."""
    import torch
    from lightning.pytorch import Callback


    class MemoryProbe(Callback):
        def __init__(self) -> None:
            self.steps: list[float] = []

        def on_train_start(self, trainer, pl_module) -> None:
            device = pl_module.device
            self.meter = bench_common.PeakMemory(device).__enter__()  # gc + malloc_trim, then reset the high-water mark
            self.start_mib = (bench_common.status_kb("VmRSS") or 0) / 1024 if device.type == "cpu" else \
                torch.cuda.memory_allocated(device) / 2**20

        def on_train_batch_start(self, *args) -> None:
            self._t = time.perf_counter()

        def on_train_batch_end(self, *args) -> None:
            self.steps.append(time.perf_counter() - self._t)

        def on_train_end(self, trainer, pl_module) -> None:
            self.meter.__exit__(None, None, None)
            self.params = sum(p.numel() for p in pl_module.parameters())
            self.trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)

    return MemoryProbe()


def child(variant: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One fit in this process; returns its measurements."""
    from lightning.pytorch import Trainer, seed_everything

    from adapruner_lightning import AdaPrunerCallback, CausalLMModule, TextDataModule
    from adapruner_lightning.core.config import PruningConfig
    from adapruner_lightning.search.config import SearchConfig
    from adapruner_lightning.lightning.recovery import RecoveryConfig, wrap_for_recovery

    seed_everything(0, verbose=False)
    module = CausalLMModule(model=None, lr=3e-4)
    data = TextDataModule(model=None, texts=["austen:calibration"], seq_len=256, batch_size=4, val_windows=2)
    recovery = RecoveryConfig(mode=mode)
    probe, callbacks = _probe(), []
    if variant == "pruned":
        callbacks.append(AdaPrunerCallback(target_ratio=args.ratio, search=SearchConfig.of(trials=0), recovery=recovery,
                                           pruning=PruningConfig(metric="wanda_sp"), export=False, progress=False,
                                           output_dir=str(args.work / f"{variant}_{mode}")))
    elif mode == "lora":
        module.model = wrap_for_recovery(module.model, recovery)
    trainer = Trainer(max_steps=args.steps, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0, callbacks=[*callbacks, probe], default_root_dir=str(args.work))
    trainer.fit(module, datamodule=data)
    steady = probe.steps[2:] or probe.steps  # the first steps include allocator warm-up
    return {"variant": variant, "mode": mode, "params": probe.params, "trainable": probe.trainable,
            "start_mib": probe.start_mib, "growth_mib": probe.meter.peak_mib,
            "peak_mib": probe.start_mib + probe.meter.peak_mib, "method": probe.meter.method,
            "step_s": statistics.median(steady), "steps": len(probe.steps)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    p.add_argument("--steps", type=int, default=8, help="fine-tune steps per run (4 x 256 tokens each)")
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--work", type=Path, default=Path("runs/fit_memory"))
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--child", nargs=2, metavar=("VARIANT", "MODE"), help=argparse.SUPPRESS)
    return p


def render(rows: list[dict[str, Any]], info: dict[str, Any], wall: float) -> str:
    """Markdown table with pruned/dense ratios per mode."""
    L = ["# Fine-tune memory: pruned vs dense (adapruner-lightning)", "",
         f"- date: {info['date']}; machine: {info['platform']}, {info['cpu_count']} cores, device "
         f"`{info['device']}`, torch {info['torch']}; wall time {wall:.0f} s",
         f"- command: `{info['command']}`",
         "- embedded SmolLM2-135M, calibration novels, batches of 4 x 256 tokens, AdamW lr 3e-4, seed 0; each run in "
         "a fresh process, one at a time, nothing else running; pruned = `AdaPrunerCallback(target_ratio=0.2)`, no "
         "search (wanda_sp, 10 samples)",
         f"- memory ({rows[0]['method']}): resident at train start (weights, optimizer not yet built, leftovers of "
         "pruning) and the high-water mark *above* it during training (activations, gradients, optimizer states), "
         "reset at train start after `gc` + `malloc_trim`", "",
         "| mode | model | params | trainable | resident at train start (MiB) | peak above it in training (MiB) | "
         "peak total (MiB) | median step (s) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        L.append(f"| {r['mode']} | {r['variant']} | {r['params']:,} | {r['trainable']:,} | {r['start_mib']:,.0f} | "
                 f"{r['growth_mib']:,.0f} | {r['peak_mib']:,.0f} | {r['step_s']:.2f} |")
    L += ["", "Pruned / dense:", ""]
    for mode in dict.fromkeys(r["mode"] for r in rows):
        d = next(r for r in rows if r["mode"] == mode and r["variant"] == "dense")
        p = next(r for r in rows if r["mode"] == mode and r["variant"] == "pruned")
        L.append(f"- {mode}: params {p['params'] / d['params']:.3f}, training memory (peak above train start) "
                 f"{p['growth_mib'] / d['growth_mib']:.3f}, peak total {p['peak_mib'] / d['peak_mib']:.3f}, "
                 f"step time {p['step_s'] / d['step_s']:.3f}")
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(*args.child, args)), flush=True)
        return 0
    import torch

    info, start, rows = bench_common.machine_info(torch.device("cuda" if torch.cuda.is_available() else "cpu")), time.perf_counter(), []
    for mode in args.modes:
        for variant in ("dense", "pruned"):
            cmd = [sys.executable, __file__, "--child", variant, mode, "--steps", str(args.steps), "--ratio",
                   str(args.ratio), "--work", str(args.work)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{variant}/{mode} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            rows.append(json.loads(out.stdout.split("RESULT ", 1)[1].splitlines()[0]))
            print(f"{variant}/{mode}: {rows[-1]}", flush=True)
    text = render(rows, info, time.perf_counter() - start)
    bench_common.write_results(args.out_dir, "fit_memory", {"machine": info, "rows": rows, "settings": vars(args)}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
