"""GP vs TPE vs random search at equal trial budgets, and the subset encoding vs a "seed integer" encoding.

On the embedded SmolLM2-135M (20 % of total parameters removed), for each seed:

* splits ``make_splits(tok, texts_for("austen:calibration"), n_pool=32, pool_seq_len=128, n_objective=4,
  objective_seq_len=256, seed=seed)`` and one shared :class:`PruningSession` (the statistics pass runs once per
  seed, every engine reuses it);
* searches over the cached-statistics metrics (``taylor_vector, wanda_sp, flap, magnitude_l2``), the reducers,
  kept first/last layers, the layer ramp and the calibration subset (k = 8 of N = 32), with the GP engine
  (bayesian-optimization), TPE (optuna) and random search;
* the calibration subset encoded as in the library (``subset_dims`` PCA coordinates, the k samples nearest to the
  point) and, for GP and TPE, as one integer seeding ``randperm(N)[:k]`` (a subclass of ``SearchSpace``
  defined here; the library is unchanged).

A search suggests trial ``t`` from the finished trials, the seed and ``t`` only (never from the budget), so the
best of the first ``b`` trials of one run *is* the result of a ``b``-trial search: one run of the largest budget
per (engine, encoding, seed) gives every budget. The engines draw the same random initial trials (same seed,
same trial index), and a candidate already scored on a seed's session is looked up instead of re-evaluated
(the objective is deterministic), which saves about a fifth of the evaluations. Reported: best objective (negative log perplexity on the
objective windows, higher is better) and its perplexity, mean +- std over seeds, per budget.

Results: ``benchmarks/results/search_vs_random.md`` and ``.json``.

Usage::

    python benchmarks/search_vs_random.py            # budgets 8 16, seeds 0 1 2 (~30-40 min on 2 busy cores)
    python benchmarks/search_vs_random.py --quick    # budgets 4 8, N=16, k=6, 2 objective windows
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adapruner_lightning.search.dimensions import ConditionalSpace, Dimension
from adapruner_lightning.search.space import SearchSpace

RESULTS_DIR = Path(__file__).resolve().parent / "results"
METRICS = ["taylor_vector", "wanda_sp", "flap", "magnitude_l2"]
SEED_RANGE = 1000


@dataclass
class SeedIntegerSpace(SearchSpace):
    """The same space with the subset encoded by one integer seeding ``randperm(N)[:k]`` (no locality)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        table = self.dims.dims
        coords = [name for name in table if name[0] == "u" and name[1:].isdigit()]
        when = table[coords[0]].when if coords else None  # where the subset is read, as for the coordinates
        rest = {name: dim for name, dim in table.items() if name not in coords}
        self.dims = ConditionalSpace({**rest, "subset_seed": Dimension((0, SEED_RANGE - 1, int), 0, when)},
                                     self.dims.fixed)

    def subset(self, point: dict[str, Any]) -> list[int]:
        n, k = self.embedding.shape[0], int(point.get("num_samples", self.num_samples))
        gen = torch.Generator().manual_seed(int(point["subset_seed"]))
        return sorted(torch.randperm(n, generator=gen)[:k].tolist())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--budgets", type=int, nargs="+", default=[8, 16], help="trial budgets compared")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (splits and search), >= 3")
    p.add_argument("--engines", nargs="+", default=["gp", "tpe", "random"], choices=["gp", "gp-raw", "tpe", "random"],
                   help="gp-raw: the GP on raw scores (score_transform='none') instead of the default copula")
    p.add_argument("--seed-encoding-engines", nargs="*", default=["gp", "tpe"], choices=["gp", "gp-raw", "tpe"],
                   help="engines also run with the seed-integer subset encoding")
    p.add_argument("--no-seed-encoding", action="store_true", help="skip the seed-integer encoding runs")
    p.add_argument("--init-points", type=int, default=4, help="random trials before GP/TPE take over")
    p.add_argument("--pool", type=int, default=32, help="pool size N")
    p.add_argument("--subset-size", type=int, default=8, help="samples per candidate k")
    p.add_argument("--objective-windows", type=int, default=4, help="objective windows (x 256 tokens)")
    p.add_argument("--ratio", type=float, default=0.2, help="fraction of total parameters removed")
    p.add_argument("--batch-size", type=int, default=8, help="batch of the statistics pass and the objective")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where search_vs_random.md / .json go")
    p.add_argument("--quick", action="store_true",
                   help="budgets 4 8, init points 3, N=16, k=6, 2 objective windows (3 seeds kept)")
    args = p.parse_args(argv)
    if args.quick:
        args.budgets, args.init_points, args.pool, args.subset_size, args.objective_windows = [4, 8], 3, 16, 6, 2
    args.budgets = sorted(set(args.budgets))
    return args


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def render_markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    L = ["# GP vs TPE vs random search (adapruner-lightning)", "",
         f"- date: {m['date']}; wall time {result['wall_seconds']:.0f} s",
         f"- machine: {m['platform']}, {m['cpu_count']} cores, device `{m['device']}`; torch {m['torch']} "
         f"({m['torch_threads']} threads, default), transformers {m['transformers']}",
         f"- command: `{m['command']}`",
         f"- embedded SmolLM2-135M, {s['ratio']:.0%} of total parameters removed; pool N={s['pool']} x 128 tokens, "
         f"k={s['subset_size']}, objective {s['objective_windows']} x 256 tokens (negative log perplexity, higher "
         f"is better); metrics {', '.join(s['metrics'])}; reducers, keep_first/last, layer ramp and FLAP bias "
         "compensation searched; gp = the library's GP (scores copula-transformed), gp-raw = the GP on raw scores; "
         f"{s['init_points']} random initial trials for GP/TPE; seeds {s['seeds']} (the seed sets the splits and "
         "the search)",
         "- one run of the largest budget per (engine, encoding, seed): a trial's suggestion does not depend on "
         "the budget, so the best of its first b trials is a b-trial search; a candidate already scored on the "
         "seed's session (the engines share their random initial trials) is not evaluated again (deterministic "
         "objective)", "",
         "Best objective reached, mean +- std over seeds (perplexity on the objective windows in brackets, lower is "
         "better):", "",
         "| engine | subset encoding | " + " | ".join(f"budget {b}" for b in s["budgets"]) + " |",
         "|---|---|" + "---:|" * len(s["budgets"])]
    for row in result["summary"]:
        cells = []
        for b in s["budgets"]:
            c = row["budgets"][str(b)]
            cells.append(f"{c['mean']:.4f} +- {c['std']:.4f} (ppl {c['ppl_mean']:.3f} +- {c['ppl_std']:.3f})")
        L.append(f"| {row['engine']} | {row['encoding']} | " + " | ".join(cells) + " |")
    L += ["", "Per seed (best -log ppl at each budget):", "",
          "| engine | encoding | seed | " + " | ".join(f"b{b}" for b in s["budgets"]) + " | best trial | run (s) |",
          "|---|---|---:|" + "---:|" * len(s["budgets"]) + "---:|---:|"]
    for run in result["runs"]:
        L.append(f"| {run['engine']} | {run['encoding']} | {run['seed']} | "
                 + " | ".join(f"{run['best_at'][str(b)]:.4f}" for b in s["budgets"])
                 + f" | {run['best_trial']} | {run['seconds']:.0f} |")
    L += ["", "Reference points per seed (not searched): dense model, and the fixed default candidate "
          "(taylor_vector, sum, k random samples, no layers kept):", ""]
    for seed, ref in result["references"].items():
        L.append(f"- seed {seed}: dense -log ppl {ref['dense']:.4f} (ppl {math.exp(-ref['dense']):.3f}); default "
                 f"{ref['default']:.4f} (ppl {math.exp(-ref['default']):.3f}); statistics pass {ref['stats_s']:.0f} s")
    if result.get("observations"):
        L += ["", "Observations:", ""] + [f"- {o}" for o in result["observations"]]
    return "\n".join(L) + "\n"


def observations(summary: list[dict[str, Any]], budgets: list[int]) -> list[str]:
    """Plain statements comparing each engine with random search at every budget."""
    out = []
    rand = next((r for r in summary if r["engine"] == "random"), None)
    for b in budgets:
        ranked = sorted(summary, key=lambda r: -r["budgets"][str(b)]["mean"])
        out.append(f"budget {b}: ranking by mean best objective: "
                   + " > ".join(f"{r['engine']}/{r['encoding']} ({r['budgets'][str(b)]['mean']:.4f})" for r in ranked))
        if rand is not None:
            for r in summary:
                if r is rand:
                    continue
                diff = r["budgets"][str(b)]["mean"] - rand["budgets"][str(b)]["mean"]
                wins = sum(x > y for x, y in zip(r["budgets"][str(b)]["values"], rand["budgets"][str(b)]["values"]))
                spread = max(r["budgets"][str(b)]["std"], rand["budgets"][str(b)]["std"])
                out.append(f"budget {b}: {r['engine']}/{r['encoding']} - random = {diff:+.4f} -log ppl, better on "
                           f"{wins}/{len(r['budgets'][str(b)]['values'])} seeds"
                           + (" (within the seed spread)" if abs(diff) < spread else ""))
    return out


def _report(args, info, plan, runs, references, t0, log) -> None:
    """Summarise the seeds finished so far and write the .md/.json (called after every seed)."""
    summary = []
    for engine, encoding in plan:
        mine = [r for r in runs if r["engine"] == engine and r["encoding"] == encoding]
        row = {"engine": engine, "encoding": encoding, "budgets": {}}
        for b in args.budgets:
            values = [r["best_at"][str(b)] for r in mine]
            ppls = [math.exp(-v) for v in values]
            mean, std = _mean_std(values)
            pm, ps = _mean_std(ppls)
            row["budgets"][str(b)] = {"values": values, "mean": mean, "std": std, "ppl_mean": pm, "ppl_std": ps}
        summary.append(row)
    result = {
        "machine": info,
        "settings": {"budgets": args.budgets, "seeds": sorted({r["seed"] for r in runs}), "engines": args.engines,
                     "seed_encoding_engines": [] if args.no_seed_encoding else args.seed_encoding_engines,
                     "init_points": args.init_points, "pool": args.pool, "subset_size": args.subset_size,
                     "objective_windows": args.objective_windows, "ratio": args.ratio, "metrics": METRICS,
                     "batch_size": args.batch_size, "quick": args.quick, "seed_encoding_range": SEED_RANGE},
        "summary": summary, "runs": runs, "references": references,
        "observations": observations(summary, args.budgets),
        "wall_seconds": time.perf_counter() - t0,
    }
    from bench_common import write_results

    write_results(args.out_dir, "search_vs_random", result, render_markdown(result))
    log(f"written {args.out_dir / 'search_vs_random.md'} and .json in {result['wall_seconds']:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from rich.console import Console

    from adapruner_lightning.data.calibration import make_splits
    from adapruner_lightning.core.config import PruningConfig
    from adapruner_lightning.search.config import SearchConfig
    from adapruner_lightning.data.text import texts_for
    from adapruner_lightning.evaluation.metrics import evaluate_perplexity
    from adapruner_lightning.data.models import load_model
    from adapruner_lightning.progress import make_progress
    from adapruner_lightning.core.session import Candidate, PruningSession
    from adapruner_lightning.search.runner import evaluate_point
    from adapruner_lightning.search.suggest import suggest

    from bench_common import machine_info

    console = Console(stderr=True)
    log = console.log
    t0 = time.perf_counter()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    info = machine_info(device)
    log(f"torch threads {torch.get_num_threads()} (default), device {device}, load {info.get('loadavg_at_start')}")
    model, tok = load_model(None, device=device)
    texts = texts_for("austen:calibration")
    budget = max(args.budgets)
    plan = [(e, "subset") for e in args.engines]
    if not args.no_seed_encoding:
        plan += [(e, "seed") for e in args.seed_encoding_engines]
    runs, references = [], {}
    for seed in args.seeds:
        splits = make_splits(tok, texts, n_pool=args.pool, pool_seq_len=128, n_objective=args.objective_windows,
                             objective_seq_len=256, seed=seed)
        session = PruningSession(model, PruningConfig(target_ratio=args.ratio, seed=seed, num_samples=args.subset_size),
                                 splits.pool.to(device),
                                 objective_windows=splits.objective.to(device), pool_ids=splits.pool_ids,
                                 batch_size=args.batch_size, progress=False)
        start = time.perf_counter()
        features = session.stats.features()
        stats_s = time.perf_counter() - start
        dense = -math.log(evaluate_perplexity(model, session.objective_windows, batch_size=args.batch_size,
                                              progress=False))
        subset = torch.randperm(args.pool, generator=torch.Generator().manual_seed(seed))[:args.subset_size]
        default = session.score(session.select(Candidate("taylor_vector", "sum", sorted(subset.tolist()))))
        references[str(seed)] = {"dense": dense, "default": default, "stats_s": stats_s,
                                 "objective_ids": splits.objective_ids, "pool_ids": splits.pool_ids}
        memo: dict[str, Any] = {}  # candidate -> TrialRecord, shared by the engines of this seed
        log(f"seed {seed}: statistics pass {stats_s:.0f}s; dense ppl {math.exp(-dense):.3f}, "
            f"default candidate ppl {math.exp(-default):.3f}")
        for engine, encoding in plan:
            config = SearchConfig.of(trials=budget, init_points=args.init_points, engine=engine.removesuffix("-raw"),
                                  score_transform="none" if engine == "gp-raw" else "copula", metrics=METRICS,
                                  pool_size=args.pool, objective_windows=args.objective_windows, objective_seq_len=256,
                                  vary_num_samples=False)  # k (pruning.num_samples) fixed, as the recorded results
            space = (SeedIntegerSpace if encoding == "seed" else SearchSpace).build(config, session.config, features)
            done, start, reused = [], time.perf_counter(), 0
            with make_progress() as bar:
                task = bar.add_task(f"seed {seed} {engine}/{encoding}", total=budget, info="")
                for trial in range(budget):
                    point = suggest(space, done, trial, seed)
                    key = json.dumps(space.candidate(point).describe(), sort_keys=True)
                    if key in memo:  # the same candidate was scored before on this session: same score
                        reused += 1
                        done.append(dataclasses.replace(memo[key], trial=trial, params=point, seconds=0.0))
                    else:
                        memo[key] = evaluate_point(session, space, point, trial)
                        done.append(memo[key])
                    best = max((t.score for t in done if t.status == "ok"), default=float("nan"))
                    bar.update(task, advance=1, info=f"best ppl {math.exp(-best):.3f}")
            scores = [t.score if t.status == "ok" else float("-inf") for t in done]
            best_at = {str(b): max(scores[:b]) for b in args.budgets}
            runs.append({"engine": engine, "encoding": encoding, "seed": seed, "best_at": best_at,
                         "best_trial": max(range(len(scores)), key=lambda i: (scores[i], -i)),
                         "seconds": time.perf_counter() - start, "failed": sum(t.status != "ok" for t in done),
                         "reused_trials": reused,
                         "trials": [{"trial": t.trial, "params": t.params, "candidate": t.candidate, "score": t.score,
                                     "status": t.status, "seconds": t.seconds} for t in done]})
            log(f"seed {seed} {engine}/{encoding}: " + ", ".join(f"b{b} {v:.4f}" for b, v in best_at.items()))
        session.release()
        _report(args, info, plan, runs, references, t0, log)  # after every seed: partial results survive
    return 0


if __name__ == "__main__":
    sys.exit(main())
