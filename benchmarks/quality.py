"""The side-by-side quality table: AdaPruner against the baselines at equal parameter count, one run.

On the embedded model (SmolLM2-135M) every method prunes the same dense weights to the same target and is
scored on the same held-out tokens (Persuasion, Northanger Abbey), the same zero-shot items built from
them and the same items of the seven standard tasks (BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e, ARC-c,
OpenBookQA; offline, the split lm-eval scores; "7-task acc" is their unweighted mean, as papers report); calibration and the search objective come only from the four calibration novels. Methods:
dense; random groups; magnitude L2; LLM-Pruner default (taylor, 10 random samples, layerwise, layers
[4, N-2)); wanda_sp (uniform per layer) and FLAP as its reference code runs it (``flap_reference`` with
``scope="standardized"``, its bias compensation and its 2,048 samples, i.e. the whole pool of 64); AdaPruner
(Bayesian search, the library's defaults: its first trials are FLAP's and LLM-Pruner's settings, the subset size
is searched up to the pool). Run only when named: flap_k10 (FLAP on 10 random samples), adapruner_k10 (the search
with 10 samples a candidate), adapruner_v01 (0.1's search: random initial points, layerwise selection) and
adapruner_kl (the library's search scored by KL from the dense model instead of perplexity). Before and after the same
short recovery (``--recoveries``: LoRA or full x LM loss, distillation or half and half). Results are
appended cell by cell to ``<out>/cells.jsonl`` so a run resumes.

    python benchmarks/quality.py --quick            # 20%, 3 seeds before recovery, 1 after
    python benchmarks/quality.py                    # 10/20/30%, 3 seeds, resumable
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from adapruner_lightning.data.calibration import make_splits
from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.data.text import texts_for, tokenize_windows, write_text_atomic
from adapruner_lightning.evaluation.evaluate import task_items
from adapruner_lightning.core.importance import get_metric
from adapruner_lightning.evaluation.loglik import choice_logliks
from adapruner_lightning.evaluation.metrics import evaluate_perplexity, item_correctness
from adapruner_lightning.data.models import load_model
from adapruner_lightning.core.plan import PruningPlan
from adapruner_lightning.core.physical import apply_plan
from adapruner_lightning.core.session import PruningSession, plan_options
from adapruner_lightning.search.runner import run_search
from adapruner_lightning.core.stats import StatsCache

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (the benchmarks' shared machine description)

OFFLINE = ("austen_next_sentence_easy", "austen_next_sentence", "austen_cloze")
#: the seven standard zero-shot tasks of the pruning papers, offline (the split lm-eval scores, first --std-items)
SEVEN = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
TASKS = (*OFFLINE, *SEVEN)
# method -> (PruningConfig overrides, searches?, depends on seed?)
METHODS = {
    "random": (dict(metric="random"), False, True),
    "magnitude_l2": (dict(metric="magnitude_l2"), False, False),
    "llm_pruner": (dict(metric="taylor", keep_first=4, keep_last=2), False, True),
    "wanda_sp": (dict(metric="wanda_sp"), False, True),
    # FLAP as its reference code runs it (lib/prune.py, WIFV, structure AL-AM): squared attention fluctuation,
    # per-layer standardised scores, one cost-weighted global threshold, bias compensation, and its main.py's
    # 2,048 calibration samples (clipped to the pool: every one of its 64)
    "flap": (dict(metric="flap_reference", scope="standardized", bias_compensation=True, num_samples=2048),
             False, True),
    # the same on 10 random samples (LLM-Pruner's count; the "flap" of the tables before 2026-12-04)
    "flap_k10": (dict(metric="flap_reference", scope="standardized", bias_compensation=True), False, True),
    "adapruner": ({}, True, True),
    # the search with the subset size fixed at 10 (the library's default before 2026-12-04)
    "adapruner_k10": ({}, True, True),
    # 0.1's search, for comparison: random initial points only, layerwise selection, no flap_reference
    "adapruner_v01": ({}, True, True),
    # the library's search with the distillation-aware objective (KL from the dense model on the objective windows)
    "adapruner_kl": ({}, True, True),
}
#: comparison variants, run only when named
COMPARISONS = ("flap_k10", "adapruner_k10", "adapruner_v01", "adapruner_kl")
#: SearchConfig options of the searching methods beyond trials/init_points (adapruner: the library's defaults,
#: which start from the baselines' settings)
SEARCH_OPTIONS = {
    "adapruner": {},
    "adapruner_k10": {"vary_subset_size": False},
    "adapruner_v01": {"warm_start": [], "scope": False, "vary_subset_size": False,
                      "metrics": ["taylor", "taylor_vector", "wanda_sp", "flap", "magnitude_l2"]},
    "adapruner_kl": {"objective": "kl"},
}


#: recovery variant -> (RecoveryConfig mode, distillation weight (0: LM loss only), learning rate)
RECOVERIES = {
    "lora-lm": ("lora", 0.0, 3e-4), "lora-kl": ("lora", 1.0, 3e-4), "lora-mix": ("lora", 0.5, 3e-4),
    "full-lm": ("full", 0.0, 1e-4), "full-kl": ("full", 1.0, 1e-4), "full-mix": ("full", 0.5, 1e-4),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="20%% only, 3 seeds before recovery, 1 after, small eval")
    p.add_argument("--ratios", type=float, nargs="+", default=None)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--recovery-seeds", type=int, default=None, help="seeds that also get the recovery fine-tune")
    p.add_argument("--methods", nargs="+", default=[m for m in METHODS if m not in COMPARISONS], choices=list(METHODS),
                   help="methods to run (default: all but the search variants adapruner_v01 (0.1's search) and "
                        "adapruner_kl (KL objective), which run only when named)")
    p.add_argument("--trials", type=int, default=12, help="AdaPruner search trials")
    p.add_argument("--eval-tokens", type=int, default=None, help="perplexity tokens per evaluation novel")
    p.add_argument("--items", type=int, default=None, help="zero-shot items per offline (Austen) task")
    p.add_argument("--std-items", type=int, default=None,
                   help="first items of each of the seven standard tasks (0 = every item of the split)")
    p.add_argument("--recovery-steps", type=int, default=None)
    p.add_argument("--recoveries", nargs="+", default=["lora-lm"], choices=list(RECOVERIES),
                   help="recovery fine-tunes, each run on every recovered cell: LoRA or full x LM loss, KL to the "
                        "dense model (distillation) or half and half")
    p.add_argument("--dense-recovery", action=argparse.BooleanOptionalAction, default=None,
                   help="also fine-tune the dense model, for reference (default: on, off with --quick)")
    p.add_argument("--out", default="benchmarks/results/quality_standard")
    return p


def _search_config(method: str, trials: int) -> SearchConfig:
    """The search a searching ``method`` runs: ``trials`` trials, the first ``min(5, trials)`` of them initial."""
    return SearchConfig.of(trials=trials, init_points=min(5, trials), **SEARCH_OPTIONS[method])


def recipe(method: str, ratio: float, seed: int, trials: int) -> dict:
    """Every option a method's plan depends on, resolved against the library's current defaults (memory knobs
    left out, as in a search trace's problem key): a kept plan is reused only while its recipe is unchanged, so
    a plan searched before a default changed is not passed off as today's method."""
    overrides, searches, _ = METHODS[method]
    pruning = plan_options(PruningConfig(target_ratio=ratio, seed=seed, **overrides))
    search = dataclasses.asdict(_search_config(method, trials)) if searches else None
    return json.loads(json.dumps({"pruning": pruning, "search": search}, default=str))


def _recipe_difference(old: dict | None, new: dict) -> str:
    """The options in which a kept plan's recipe differs from today's, for the line that says it is planned again."""
    if not old:
        return "no recipe recorded"
    changed = [f"{part}.{k}" for part in new for k in sorted(set(old.get(part) or {}) | set(new[part] or {}))
               if (old.get(part) or {}).get(k) != (new[part] or {}).get(k)]
    return ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else "")


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
        self.items = [it for task in OFFLINE for it in task_items(task, evaluation, n_items=args.items, seed=0)]
        self.items += [it for task in SEVEN for it in task_items(task, {}, n_items=args.std_items or None)]
        self.chance = statistics.mean(1 / len(it.choices) for it in self.items)
        self.task_sizes = [sum(it.task == task for it in self.items) for task in TASKS]  # items are in TASKS order
        self._pool_stats: StatsCache | None = None

    def fresh(self) -> torch.nn.Module:
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.dense_state)
        return model

    def evaluate(self, model: torch.nn.Module) -> dict[str, float | str]:
        """Held-out perplexity per evaluation novel, ``acc``/``acc_norm``, and which items were right
        (``correct``: one ``0``/``1`` per item, so that the table can pair methods item by item)."""
        out: dict[str, float | str] = {f"ppl/{k}": evaluate_perplexity(model, w, progress=False)
                                       for k, w in self.windows.items()}
        correct, correct_norm = item_correctness(self.items, choice_logliks(model, self.tokenizer, self.items,
                                                                            progress=False))
        out.update(acc=statistics.mean(correct), acc_norm=statistics.mean(correct_norm),
                   correct="".join("1" if c else "0" for c in correct),
                   task_sizes=self.task_sizes, tasks=list(TASKS))
        slices = _task_slices(out)
        out["acc7"] = statistics.mean(s.count("1") / len(s) for t, s in zip(TASKS, slices) if t in SEVEN)
        return out

    def prune(self, method: str, ratio: float, seed: int) -> tuple[torch.nn.Module, dict]:
        """The dense model pruned by ``method``; the plan is kept under ``<out>/plans`` so the recovered cell
        of the same method, ratio and seed applies it instead of searching or scoring again."""
        path = Path(self.args.out) / "plans" / f"{method}_{ratio}_{seed}.json"
        saved = json.loads(path.read_text()) if path.is_file() else None
        wanted = recipe(method, ratio, seed, self.args.trials)
        if saved is not None and saved.get("recipe") != wanted:
            print(f"{path}: made with other options ({_recipe_difference(saved.get('recipe'), wanted)}); "
                  "planning again", flush=True)
            saved = None
        if saved is None:
            plan, info = self._plan(method, ratio, seed)
            saved = {"plan": plan.to_dict(), "info": info, "recipe": wanted}
            write_text_atomic(path, json.dumps(saved))
        plan, info = PruningPlan.from_dict(saved["plan"]), saved["info"]
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
            search = _search_config(method, self.args.trials)
            result = run_search(session, search, seed=seed, progress=False)
            plan = result.plan
            info = {"search_seconds": result.seconds, "best_trial": result.best.trial,
                    "objective": result.best.score, **{k: plan.provenance[k] for k in ("metric", "reducer", "keep_first",
                                                                                       "keep_last", "layer_ramp",
                                                                                       "bias_compensation")}}
        else:
            plan = session.plan(session.default_candidate())
        info.update(removed=plan.achieved_ratio, samples=len(plan.provenance["subset"]))
        return plan, info

    def recover(self, model: torch.nn.Module, seed: int, variant: str = "lora-lm") -> torch.nn.Module:
        """The same short recovery ``variant`` (:data:`RECOVERIES`) for every method (finetune windows only, seeded
        order); distilling variants take the dense model as the frozen teacher."""
        from lightning.pytorch import Trainer, seed_everything
        from torch.utils.data import DataLoader

        from adapruner_lightning.lightning.distillation import DistillationConfig, Teacher, attach_teacher
        from adapruner_lightning.lightning.module import CausalLMModule
        from adapruner_lightning.lightning.recovery import RecoveryConfig, unwrap, wrap_for_recovery

        mode, weight, lr = RECOVERIES[variant]
        teacher = Teacher(self.model, DistillationConfig(weight=weight)) if weight else None
        seed_everything(seed, verbose=False)
        module = CausalLMModule(model=wrap_for_recovery(model, RecoveryConfig(mode=mode)), lr=lr, warmup_steps=2)
        attach_teacher(module, teacher)  # recovery_loss distils from it
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
            cells += [(method, ratio, seed, variant) for variant in args.recoveries for seed in rec]
    if args.dense_recovery:  # the dense model after the same fine-tunes, for reference
        cells += [("dense", 0.0, 0, variant) for variant in args.recoveries]
    return cells


def _recovery(row_or_flag) -> str:
    """A cell's recovery variant ("" for none); cells written before the variants existed hold True for LoRA-LM."""
    flag = row_or_flag.get("recovered") if isinstance(row_or_flag, dict) else row_or_flag
    return "lora-lm" if flag is True else (flag or "")


def _label(variant: str) -> str:
    """The table's name of a recovery variant."""
    return {"": "—", "lora-lm": "LoRA"}.get(variant, variant)


def _key(cell) -> str:
    method, ratio, seed, recovered = cell
    variant = _recovery(recovered)
    return f"{method}|{ratio}|{seed}|{ {'': '0', 'lora-lm': '1'}.get(variant, variant) }"


def _load_cells(path: Path) -> dict[str, dict]:
    """The finished cells of an earlier (possibly killed) run, by key; a torn last line is dropped, since
    that cell did not finish writing and is simply run again."""
    lines = path.read_text().splitlines() if path.exists() else []
    done = {}
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{path}:{number} is not a JSON line; only the last line may be torn") from None
            print(f"{path}: dropping a torn last line (that cell runs again)", flush=True)
            write_text_atomic(path, "".join(l + "\n" for l in lines[:-1]))  # later cells append whole lines
            continue
        done[row["key"]] = row
    return done


def run(args) -> tuple[list[dict], int]:
    """Run every cell of ``args`` not yet in ``<out>/cells.jsonl``; return all finished rows and how many
    cells this call ran."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "cells.jsonl"
    done = _load_cells(path)
    bench, ran = None, 0  # the model is loaded only when a cell is missing: re-rendering costs no load
    for cell in _cells(args):
        if _key(cell) in done:
            continue
        bench = bench or Bench(args)
        method, ratio, seed, recovered = cell
        start = time.perf_counter()
        if method == "dense":
            model, info = bench.fresh(), {"removed": 0.0}
        else:
            model, info = bench.prune(method, ratio, seed)
        if recovered:
            model = bench.recover(model, seed, _recovery(recovered))
        row = {"key": _key(cell), "method": method, "ratio": ratio, "seed": seed, "recovered": _recovery(recovered) or False,
               **bench.evaluate(model), **info, "seconds": time.perf_counter() - start, "chance": bench.chance}
        done[row["key"]], ran = row, ran + 1
        with path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{row['key']:<30} ppl {[round(row[k], 2) for k in row if k.startswith('ppl/')]} acc {row['acc']:.3f} "
              f"({row['seconds']:.0f}s)", flush=True)
    return list(done.values()), ran


def _num(value: float, digits: int = 2, sign: bool = False) -> str:
    """``value`` with thousands separators (and an explicit sign for differences)."""
    return f"{value:{'+' if sign else ''},.{digits}f}"


def _mean_spread(values: list[float], digits: int = 2, sign: bool = False) -> str:
    """``mean ± sample std`` (the value alone for one seed)."""
    if len(values) == 1:
        return _num(values[0], digits, sign)
    return f"{_num(statistics.mean(values), digits, sign)} ± {_num(statistics.stdev(values), digits)}"


def _mean_ppl(row: dict) -> float:
    """The mean of a cell's held-out perplexities (one per evaluation novel)."""
    return statistics.mean(v for k, v in row.items() if k.startswith("ppl/"))


def _per_item_differences(pairs: list[tuple[str, str]]) -> list[float]:
    """Each item's right/wrong difference (``correct`` strings of two cells) averaged over the paired seeds:
    the same items are scored for every seed, so the items, not the seeds x items, are the sample."""
    return [statistics.mean(int(x) - int(y) for x, y in column)
            for column in zip(*(zip(a, b, strict=True) for a, b in pairs))]


def _sem(values: list[float]) -> float:
    """Standard error of the mean."""
    return statistics.stdev(values) / math.sqrt(len(values))


def _item_se(pairs: list[tuple[dict, dict]]) -> str:
    """Standard error of the paired accuracy difference with the items as the sample ("" without per-item
    results)."""
    if not pairs or not all("correct" in r and "correct" in b for r, b in pairs):
        return ""
    per_item = _per_item_differences([(r["correct"], b["correct"]) for r, b in pairs])
    return f"{_sem(per_item):.3f}" if len(per_item) > 1 else ""


def _paired(rs: list[dict], base: dict[int, dict]) -> list[str]:
    """Paired differences against the LLM-Pruner cells of the same seeds: mean perplexity (mean ± std over
    seeds, and on how many seeds it is lower), accuracy (the same, higher), and the accuracy difference's
    item-level standard error."""
    pairs = [(r, base[r["seed"]]) for r in rs if r["seed"] in base]
    if not pairs:
        return ["", "", ""]
    d_ppl = [_mean_ppl(r) - _mean_ppl(b) for r, b in pairs]
    d_acc = [r["acc"] - b["acc"] for r, b in pairs]
    n = len(pairs)
    return [f"{_mean_spread(d_ppl, sign=True)} ({sum(d < 0 for d in d_ppl)}/{n})",
            f"{_mean_spread(d_acc, 3, sign=True)} ({sum(d > 0 for d in d_acc)}/{n})", _item_se(pairs)]


def _baseline(groups: dict[tuple, list[dict]], ratio: float, method: str, recovered: bool) -> dict[int, dict]:
    """The LLM-Pruner cells a group is paired with, by seed (none for LLM-Pruner itself)."""
    if method == "llm_pruner":
        return {}
    return {r["seed"]: r for r in groups.get((ratio, "llm_pruner", recovered), [])}


def _groups(rows: list[dict], include=lambda row: True) -> dict[tuple, list[dict]]:
    """Rows by (ratio, method, recovered), in table order: ratio, then before/after recovery, then ``METHODS``."""
    order = {m: i for i, m in enumerate(METHODS)}
    groups: dict[tuple, list[dict]] = {}
    variants = {v: i for i, v in enumerate(["", *RECOVERIES])}
    for r in sorted(rows, key=lambda r: (r["ratio"], variants[_recovery(r)], order.get(r["method"], -1), r["seed"])):
        if include(r):
            groups.setdefault((r["ratio"], r["method"], _recovery(r)), []).append(r)
    return groups


def _task_slices(row: dict) -> list[str] | None:
    """A cell's per-item results cut by task (items are built task by task, in ``TASKS`` order); cells written
    before ``task_sizes`` was recorded hold equally many items per task."""
    correct = row.get("correct")
    if not correct:
        return None
    tasks = row.get("tasks", OFFLINE)  # rows written before the seven standard tasks joined hold the offline ones
    sizes = row.get("task_sizes") or ([len(correct) // len(tasks)] * len(tasks) if len(correct) % len(tasks) == 0 else None)
    if sizes is None or sum(sizes) != len(correct):
        return None
    bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    return [correct[a:b] for a, b in zip(bounds, bounds[1:])]


def task_table(rows: list[dict]) -> str:
    """Accuracy per zero-shot task (mean over seeds) and its paired difference against the LLM-Pruner default
    of the same ratio, recovery and seeds (± item-level standard error), for the cells that kept per-item results."""
    with_items = [r for r in rows if _task_slices(r) is not None]
    if not with_items:
        return ""
    names = with_items[0].get("tasks", OFFLINE)
    groups = _groups(with_items, lambda r: r.get("tasks", OFFLINE) == names)
    lines = ["| ratio | method | recovery | " + " | ".join(f"{t} acc | Δ vs LLM-Pruner ± SE" for t in names) + " |",
             "|---" * (3 + 2 * len(names)) + "|"]
    for (ratio, method, rec), rs in groups.items():
        base = _baseline(groups, ratio, method, rec)
        pairs = [(_task_slices(r), _task_slices(base[r["seed"]])) for r in rs if r["seed"] in base]
        cols = []
        for t in range(len(names)):
            cols.append(f"{statistics.mean(s[t].count('1') / len(s[t]) for s in map(_task_slices, rs)):.3f}")
            per_item = _per_item_differences([(a[t], b[t]) for a, b in pairs]) if pairs else []
            cols.append(f"{statistics.mean(per_item):+.3f} ± {_sem(per_item):.3f}" if len(per_item) > 1 else "")
        lines.append(f"| {ratio:.0%} | {method} | {_label(rec)} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def table(rows: list[dict], args) -> str:
    """The Markdown table: one line per ratio x method x recovery, seeds pooled (mean ± std), with "% of
    dense" columns and paired differences against the LLM-Pruner default of the same ratio, recovery and
    seed ("(k/n)": better on k of n paired seeds)."""
    ppl_keys = sorted(k for k in rows[0] if k.startswith("ppl/"))
    dense = next(r for r in rows if r["method"] == "dense" and not r["recovered"])
    seven = all("acc7" in r for r in rows)  # the mean accuracy of the seven standard tasks, as papers report it
    lines = ["| ratio | method | recovery | " + " | ".join(k[4:] + " ppl" for k in ppl_keys)
             + " | mean ppl % of dense | acc | acc % of dense | " + ("7-task acc | 7-task % of dense | " if seven else "")
             + "Δ mean ppl vs LLM-Pruner (paired seeds) "
             + "| Δacc vs LLM-Pruner (paired seeds) | Δacc item-level SE | seeds |",
             "|---" * (len(ppl_keys) + 10 + 2 * seven) + "|"]
    groups = _groups(rows)
    for (ratio, method, rec), rs in groups.items():
        base = _baseline(groups, ratio, method, rec)
        cols = [_mean_spread([r[k] for r in rs]) for k in ppl_keys]
        cols += [f"{100 * statistics.mean(map(_mean_ppl, rs)) / _mean_ppl(dense):,.0f}%",
                 _mean_spread([r["acc"] for r in rs]), f"{100 * statistics.mean(r['acc'] for r in rs) / dense['acc']:.1f}%"]
        if seven:
            cols += [_mean_spread([r["acc7"] for r in rs], 3),
                     f"{100 * statistics.mean(r['acc7'] for r in rs) / dense['acc7']:.1f}%"]
        cols += _paired(rs, base) + [str(len(rs))]
        lines.append(f"| {ratio:.0%} | {method} | {_label(rec)} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    """Bar chart: mean held-out perplexity and accuracy as % of dense per method, before/after recovery,
    with the spread over seeds as error bars and the accuracy of chance as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = next(r for r in rows if r["method"] == "dense" and not r["recovered"])
    groups = _groups(rows, lambda r: r["method"] != "dense")
    labels = [f"{m}\n{ratio:.0%}{' +' + _label(rec) if rec else ''}" for ratio, m, rec in groups]
    colors = [("tab:red", "tab:blue") if not rec else ("salmon", "lightskyblue") for _, _, rec in groups]

    def bars(values: list[list[float]], scale: float) -> tuple[list[float], list[float]]:
        return ([100 * statistics.mean(v) / scale for v in values],
                [100 * statistics.stdev(v) / scale if len(v) > 1 else 0.0 for v in values])

    ppl, ppl_err = bars([[_mean_ppl(r) for r in rs] for rs in groups.values()], _mean_ppl(dense))
    acc, acc_err = bars([[r["acc"] for r in rs] for rs in groups.values()], dense["acc"])
    fig, (a, b) = plt.subplots(2, 1, figsize=(max(8, len(labels) * 0.9), 7), sharex=True)
    x = range(len(labels))
    a.bar(x, ppl, yerr=ppl_err, color=[c for c, _ in colors], capsize=3)
    a.set_yscale("log")
    a.set_ylabel("held-out ppl, % of dense (log)")
    a.axhline(100, color="k", lw=0.8)
    b.bar(x, acc, yerr=acc_err, color=[c for _, c in colors], capsize=3)
    b.set_ylabel("zero-shot acc, % of dense")
    b.axhline(100, color="k", lw=0.8)
    if "chance" in dense:
        b.axhline(100 * dense["chance"] / dense["acc"], color="k", lw=0.8, ls="--", label="chance")
        b.legend(loc="lower left", fontsize=8)
    b.set_xticks(list(x), labels, rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options left unset: ``--quick`` sizes (20%, 1 recovered seed, 2 x 4,096 ppl tokens, 3 x 34
    offline items and the first 30 items of each standard task, 10 recovery steps, no dense fine-tune) or the
    full ones (10/20/30%, every seed recovered, 2 x 20,480 tokens, 3 x 200 offline items and every item of the
    seven standard tasks, 100 steps, dense fine-tune for reference)."""
    if args.quick:
        args.ratios = args.ratios or [0.2]
        args.recovery_seeds = 1 if args.recovery_seeds is None else args.recovery_seeds
        args.eval_tokens, args.items = args.eval_tokens or 4096, args.items or 34
        args.std_items = 30 if args.std_items is None else args.std_items
        args.recovery_steps = args.recovery_steps or 10
        args.dense_recovery = bool(args.dense_recovery)
    args.ratios = args.ratios or [0.1, 0.2, 0.3]
    args.recovery_seeds = args.seeds if args.recovery_seeds is None else args.recovery_seeds
    args.eval_tokens, args.items = args.eval_tokens or 20480, args.items or 200
    args.std_items = 0 if args.std_items is None else args.std_items
    args.recovery_steps = args.recovery_steps or 100
    args.dense_recovery = args.dense_recovery is not False
    return args


def _log_sitting(path: Path, cells: int, seconds: float, machine: dict) -> list[dict]:
    """Append this invocation to ``<out>/runs.jsonl`` when it ran cells (a resumable run may take several
    sittings, on several machines); return every recorded sitting."""
    if cells:
        entry = {"date": machine["date"], "cpu_model": machine["cpu_model"], "command": machine["command"],
                 "cells": cells, "seconds": seconds}
        with path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def main(argv: list[str] | None = None) -> int:
    args = resolve_defaults(_parser().parse_args(argv))
    start = time.perf_counter()
    rows, ran = run(args)
    out = Path(args.out)
    machine = speed.machine_info(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    sittings = _log_sitting(out / "runs.jsonl", ran, time.perf_counter() - start, machine)
    md = table(rows, args)
    per_task = task_table(rows)
    if per_task:
        md += "\n\nPer task (seeds pooled; Δ paired by seed and item against the LLM-Pruner default):\n\n" + per_task
    recovered = {0: "none", 1: "seed 0"}.get(args.recovery_seeds, f"seeds 0..{args.recovery_seeds - 1}")
    ran_in = "; ".join(f"{s['date']} {s['cpu_model']}: {s['cells']} cells in {s['seconds']:.0f} s" for s in sittings)
    header = (f"Quality benchmark — {dt.date.today()} — {machine['cpu_model']}, {machine['cpu_count']} cores, "
              f"{machine.get('gpu', 'no GPU')}, torch {torch.__version__}, {torch.get_num_threads()} threads. "
              f"Rendered by: `python {' '.join(sys.argv)}` (each sitting's own command: runs.jsonl). "
              f"Perplexity: first {args.eval_tokens} tokens of each evaluation novel "
              f"(seq 256). Accuracy: {len(OFFLINE)} offline tasks from the same novels, {args.items} items each, and the "
              f"seven standard tasks ({args.std_items or 'every'} items each, the split lm-eval scores; chance over all "
              f"items {rows[0]['chance']:.3f}). AdaPruner: {args.trials} GP trials. Seeds 0..{args.seeds - 1}; after "
              f"recovery ({args.recovery_steps} steps of 4 x 256 tokens; {', '.join(args.recoveries)}): {recovered}. "
              f"Sittings that ran cells: "
              f"{ran_in or 'none recorded'}; the cells' own times add up to {sum(r['seconds'] for r in rows):.0f} s.")
    (out / "quality.md").write_text(header + "\n\n" + md + "\n")
    (out / "quality.json").write_text(json.dumps({"args": vars(args), "machine": machine, "rows": rows}, indent=1))
    plot(rows, out / "quality.png")
    print(header + "\n\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
