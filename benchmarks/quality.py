"""The side-by-side quality table: AdaPruner against the baselines at equal parameter count, one run.

On the embedded model (SmolLM2-135M) every method prunes the same dense weights to the same target and is
scored on the same held-out tokens (Persuasion, Northanger Abbey) and the same zero-shot items built from
them; calibration and the search objective come only from the four calibration novels. Methods:
dense; random groups; magnitude L2; LLM-Pruner default (taylor, 10 random samples, layerwise, layers
[4, N-2)); wanda_sp and FLAP (its fluctuation metric with its bias compensation; 10 random samples); AdaPruner
(Bayesian search). Before and after the same
short LoRA recovery. Results are appended cell by cell to ``<out>/cells.jsonl`` so a run resumes.

    python benchmarks/quality.py --quick            # 20%, 3 seeds before recovery, 1 after
    python benchmarks/quality.py                    # 10/20/30%, 3 seeds, resumable
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from adapruner_lightning.calibration import make_splits
from adapruner_lightning.config import PruningConfig, SearchConfig
from adapruner_lightning.data import texts_for, tokenize_windows
from adapruner_lightning.evaluation import task_items
from adapruner_lightning.importance import get_metric
from adapruner_lightning.metrics import evaluate_perplexity, score_multiple_choice
from adapruner_lightning.models import load_model
from adapruner_lightning.plan import PruningPlan
from adapruner_lightning.prune import apply_plan
from adapruner_lightning.pruner import PruningSession
from adapruner_lightning.search import run_search
from adapruner_lightning.stats import StatsCache

TASKS = ("austen_next_sentence_easy", "austen_next_sentence", "austen_cloze")
# method -> (PruningConfig overrides, searches?, depends on seed?)
METHODS = {
    "random": (dict(metric="random"), False, True),
    "magnitude_l2": (dict(metric="magnitude_l2"), False, False),
    "llm_pruner": (dict(metric="taylor", keep_first=4, keep_last=2), False, True),
    "wanda_sp": (dict(metric="wanda_sp"), False, True),
    "flap": (dict(metric="flap", bias_compensation=True), False, True),  # FLAP: fluctuation metric + bias compensation
    "adapruner": ({}, True, True),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="20%% only, 3 seeds before recovery, 1 after, small eval")
    p.add_argument("--ratios", type=float, nargs="+", default=None)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--recovery-seeds", type=int, default=None, help="seeds that also get the recovery fine-tune")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--trials", type=int, default=12, help="AdaPruner search trials")
    p.add_argument("--eval-tokens", type=int, default=None, help="perplexity tokens per evaluation novel")
    p.add_argument("--items", type=int, default=None, help="zero-shot items per task")
    p.add_argument("--recovery-steps", type=int, default=None)
    p.add_argument("--dense-recovery", action=argparse.BooleanOptionalAction, default=None,
                   help="also fine-tune the dense model, for reference (default: on, off with --quick)")
    p.add_argument("--out", default="benchmarks/results/quality")
    return p


class Bench:
    """Holds the dense model, the shared data and the evaluation set; runs and scores one cell."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model, self.tokenizer = load_model(None)
        self.dense_state = copy.deepcopy(self.model.state_dict())
        self.splits = make_splits(self.tokenizer, texts_for("austen:calibration"), n_pool=64, pool_seq_len=128,
                                  n_objective=8, objective_seq_len=256, seed=0)
        evaluation = texts_for("austen:evaluation")
        self.windows = {name: tokenize_windows(self.tokenizer, text, 256, max_windows=args.eval_tokens // 256)
                        for name, text in evaluation.items()}
        self.items = [it for task in TASKS for it in task_items(task, evaluation, n_items=args.items, seed=0)]
        self.chance = statistics.mean(1 / len(it.choices) for it in self.items)
        self._pool_stats: StatsCache | None = None

    def fresh(self) -> torch.nn.Module:
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.dense_state)
        return model

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        out = {f"ppl/{k}": evaluate_perplexity(model, w, progress=False) for k, w in self.windows.items()}
        mc = score_multiple_choice(model, self.tokenizer, self.items, progress=False)
        out.update(acc=mc["acc"], acc_norm=mc["acc_norm"])
        return out

    def prune(self, method: str, ratio: float, seed: int) -> tuple[torch.nn.Module, dict]:
        """The dense model pruned by ``method``; the plan is kept under ``<out>/plans`` so the recovered cell
        of the same method, ratio and seed applies it instead of searching or scoring again."""
        path = Path(self.args.out) / "plans" / f"{method}_{ratio}_{seed}.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            plan, info = PruningPlan.from_dict(saved["plan"]), saved["info"]
        else:
            plan, info = self._plan(method, ratio, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps({"plan": plan.to_dict(), "info": info}))
            tmp.replace(path)
        model = self.fresh()
        apply_plan(model, plan)
        return model, dict(info)

    def _session(self, method: str, ratio: float, seed: int) -> PruningSession:
        """A session on the dense weights. The pool's statistics depend on neither the metric, the seed nor the
        ratio, so every method that reads them shares one statistics pass (``PruningSession(stats=...)``)."""
        overrides, searches, _ = METHODS[method]
        config = PruningConfig(target_ratio=ratio, seed=seed, **overrides)
        needs_stats = searches or config.bias_compensation or get_metric(config.metric).needs == "activations"
        if needs_stats and self._pool_stats is None:
            self._pool_stats = PruningSession(self.model, config, self.splits.pool, pool_ids=self.splits.pool_ids,
                                              progress=False).stats
        return PruningSession(self.fresh(), config, self.splits.pool, objective=self.splits.objective,
                              pool_ids=self.splits.pool_ids, progress=False,
                              stats=self._pool_stats if needs_stats else None)

    def _plan(self, method: str, ratio: float, seed: int) -> tuple[PruningPlan, dict]:
        searches = METHODS[method][1]
        session = self._session(method, ratio, seed)
        info: dict = {}
        if searches:
            result = run_search(session, SearchConfig(trials=self.args.trials, init_points=min(5, self.args.trials)),
                                seed=seed, progress=False)
            plan = result.plan
            info = {"search_seconds": result.seconds, "best_trial": result.best.trial,
                    "objective": result.best.score, **{k: plan.provenance[k] for k in ("metric", "reducer", "keep_first",
                                                                                       "keep_last", "layer_ramp",
                                                                                       "bias_compensation")}}
        else:
            plan = session.plan(session.default_candidate())
        info["removed"] = plan.achieved_ratio
        return plan, info

    def recover(self, model: torch.nn.Module, seed: int) -> torch.nn.Module:
        """The same short LoRA recovery for every method (finetune windows only, seeded order)."""
        from lightning.pytorch import Trainer, seed_everything
        from torch.utils.data import DataLoader

        from adapruner_lightning.lit import CausalLMModule
        from adapruner_lightning.recovery import RecoveryConfig, unwrap, wrap_for_recovery

        seed_everything(seed, verbose=False)
        module = CausalLMModule(model=wrap_for_recovery(model, RecoveryConfig()), lr=3e-4, warmup_steps=2)
        rows = [{"input_ids": w} for w in self.splits.finetune[: self.args.recovery_steps * 4]]
        loader = DataLoader(rows, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(seed))
        trainer = Trainer(max_steps=self.args.recovery_steps, accelerator="auto", devices=1, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, train_dataloaders=loader)
        return unwrap(module.model, merge=True).eval()


def _cells(args) -> list[tuple[str, float, int, bool]]:
    cells = [("dense", 0.0, 0, False)]
    for ratio in args.ratios:
        for method in args.methods:
            seeds = range(args.seeds) if METHODS[method][2] else range(1)
            for seed in seeds:
                cells.append((method, ratio, seed, False))
            rec = range(min(args.recovery_seeds, len(seeds)))
            cells += [(method, ratio, seed, True) for seed in rec]
    if args.dense_recovery:
        cells.append(("dense", 0.0, 0, True))  # the dense model after the same fine-tune, for reference
    return cells


def _key(cell) -> str:
    method, ratio, seed, recovered = cell
    return f"{method}|{ratio}|{seed}|{int(recovered)}"


def run(args) -> list[dict]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "cells.jsonl"
    done = {json.loads(l)["key"]: json.loads(l) for l in path.read_text().splitlines()} if path.exists() else {}
    bench = Bench(args)
    for cell in _cells(args):
        if _key(cell) in done:
            continue
        method, ratio, seed, recovered = cell
        start = time.perf_counter()
        if method == "dense":
            model, info = bench.fresh(), {"removed": 0.0}
        else:
            model, info = bench.prune(method, ratio, seed)
        if recovered:
            model = bench.recover(model, seed)
        row = {"key": _key(cell), "method": method, "ratio": ratio, "seed": seed, "recovered": recovered,
               **bench.evaluate(model), **info, "seconds": time.perf_counter() - start, "chance": bench.chance}
        done[row["key"]] = row
        with path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{row['key']:<30} ppl {[round(row[k], 2) for k in row if k.startswith('ppl/')]} acc {row['acc']:.3f} "
              f"({row['seconds']:.0f}s)", flush=True)
    return list(done.values())


def _mean_spread(values: list[float], digits: int = 2) -> str:
    """``mean ± sample std`` (the value alone for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(rows: list[dict], args) -> str:
    ppl_keys = sorted(k for k in rows[0] if k.startswith("ppl/"))
    dense = next(r for r in rows if r["method"] == "dense" and not r["recovered"])
    lines = ["| ratio | method | recovery | " + " | ".join(k[4:] + " ppl" for k in ppl_keys)
             + " | mean ppl % of dense | acc | acc % of dense | Δppl vs LLM-Pruner (paired) | Δacc vs LLM-Pruner (paired) | seeds |",
             "|---" * (len(ppl_keys) + 9) + "|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["ratio"], r["method"], r["recovered"]), []).append(r)
    dense_ppl = statistics.mean(dense[k] for k in ppl_keys)
    for (ratio, method, rec), rs in sorted(groups.items(), key=lambda t: (t[0][0], t[0][2], list(METHODS).index(t[0][1]) if t[0][1] in METHODS else -1)):
        mean_ppl = [statistics.mean(r[k] for k in ppl_keys) for r in rs]
        base_rows = {r["seed"]: r for r in groups.get((ratio, "llm_pruner", rec), []) if method != "llm_pruner"}
        paired = [m - statistics.mean(base_rows[r["seed"]][k] for k in ppl_keys)
                  for m, r in zip(mean_ppl, rs) if r["seed"] in base_rows]
        paired_acc = [r["acc"] - base_rows[r["seed"]]["acc"] for r in rs if r["seed"] in base_rows]
        cols = [_mean_spread([r[k] for r in rs]) for k in ppl_keys]
        lines.append(f"| {ratio:.0%} | {method} | {'LoRA' if rec else '—'} | " + " | ".join(cols)
                     + f" | {100 * statistics.mean(mean_ppl) / dense_ppl:.0f}% | {_mean_spread([r['acc'] for r in rs])}"
                     + f" | {100 * statistics.mean(r['acc'] for r in rs) / dense['acc']:.1f}% | "
                     + (_mean_spread(paired) if paired else "") + " | "
                     + (_mean_spread(paired_acc, 3) if paired_acc else "") + f" | {len(rs)} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    """Bar chart: mean held-out perplexity and accuracy as % of dense per method, before/after recovery."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ppl_keys = sorted(k for k in rows[0] if k.startswith("ppl/"))
    dense = next(r for r in rows if r["method"] == "dense" and not r["recovered"])
    dense_ppl = statistics.mean(dense[k] for k in ppl_keys)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["method"] != "dense":
            groups.setdefault((r["ratio"], r["method"], r["recovered"]), []).append(r)
    labels = [f"{m}\n{ratio:.0%}{' +LoRA' if rec else ''}" for ratio, m, rec in groups]
    ppl = [100 * statistics.mean(statistics.mean(r[k] for k in ppl_keys) for r in rs) / dense_ppl for rs in groups.values()]
    acc = [100 * statistics.mean(r["acc"] for r in rs) / dense["acc"] for rs in groups.values()]
    fig, (a, b) = plt.subplots(2, 1, figsize=(max(8, len(labels) * 0.9), 7), sharex=True)
    a.bar(range(len(ppl)), ppl, color="tab:red")
    a.set_yscale("log")
    a.set_ylabel("held-out ppl, % of dense (log)")
    a.axhline(100, color="k", lw=0.8)
    b.bar(range(len(acc)), acc, color="tab:blue")
    b.set_ylabel("zero-shot acc, % of dense")
    b.axhline(100, color="k", lw=0.8)
    b.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options left unset: ``--quick`` sizes (20%, 1 recovered seed, 2 x 4,096 ppl tokens, 3 x 67
    items, 10 recovery steps, no dense fine-tune) or the full ones (10/20/30%, every seed recovered,
    2 x 20,480 tokens, 3 x 200 items, 100 steps, dense fine-tune for reference)."""
    if args.quick:
        args.ratios = args.ratios or [0.2]
        args.recovery_seeds = 1 if args.recovery_seeds is None else args.recovery_seeds
        args.eval_tokens, args.items = args.eval_tokens or 4096, args.items or 67
        args.recovery_steps = args.recovery_steps or 10
        args.dense_recovery = bool(args.dense_recovery)
    args.ratios = args.ratios or [0.1, 0.2, 0.3]
    args.recovery_seeds = args.seeds if args.recovery_seeds is None else args.recovery_seeds
    args.eval_tokens, args.items = args.eval_tokens or 20480, args.items or 200
    args.recovery_steps = args.recovery_steps or 100
    args.dense_recovery = args.dense_recovery is not False
    return args


def main(argv: list[str] | None = None) -> int:
    args = resolve_defaults(_parser().parse_args(argv))
    start = time.perf_counter()
    rows = run(args)
    md = table(rows, args)
    header = (f"Quality benchmark — {dt.date.today()} — {platform.machine()} {platform.processor() or ''}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads. Command: `python {' '.join(sys.argv)}`. "
              f"Perplexity: first {args.eval_tokens} tokens of each evaluation novel (seq 256). Accuracy: "
              f"{len(TASKS)} offline tasks from the same novels, {args.items} items each (chance "
              f"{rows[0]['chance']:.3f}). AdaPruner: {args.trials} GP trials. Seeds 0..{args.seeds - 1}. "
              f"Wall time {time.perf_counter() - start:.0f} s.")
    out = Path(args.out)
    (out / "quality.md").write_text(header + "\n\n" + md + "\n")
    (out / "quality.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    plot(rows, out / "quality.png")
    print(header + "\n\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
