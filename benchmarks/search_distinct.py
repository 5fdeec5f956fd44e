"""Distinct plans per trial of the default search, and the best objective at equal budget (issue 35).

On the embedded SmolLM2-135M, 20 % of total parameters removed, as ``adapruner prune`` sets it up: for each seed,
``make_splits(tok, texts_for("austen:calibration"), n_pool=64, pool_seq_len=128, n_objective=8,
objective_seq_len=256, seed)`` (the four calibration novels only), ``PruningConfig(target_ratio=0.2, seed=seed)``
and the default ``SearchConfig()`` (16 trials, GP, 5 initial points, the published baselines as warm start).

Every objective evaluation is fingerprinted from what it scores (the removed units per layer and the compensation
biases: the masked model is a function of these alone), by wrapping ``PruningSession.score`` (``objective`` before
issue 32); an evaluation whose fingerprint was already evaluated in the same search is a *re-scored* plan. The script reads only names that
exist before and after issue 35 (``run_search``, ``runner.evaluate_point``, the session's scoring method; a
record's ``repeat_of`` where it exists), so the same file measures the code of any commit::

    python benchmarks/search_distinct.py run --label new --out /tmp/new.json                 # this checkout
    PYTHONPATH=/work/wt-35-base python benchmarks/search_distinct.py run --label base --out /tmp/base.json
    python benchmarks/search_distinct.py report /tmp/base.json /tmp/new.json   # -> results/search_distinct.{md,json}

``run`` writes its JSON after every seed (a killed run keeps the seeds it finished). ``--quick``: seeds 0, 6 trials,
pool 16, 2 objective windows (a smoke run of the script itself, no result).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the default search for each seed and record every trial")
    run.add_argument("--label", required=True, help="the code measured (e.g. base, new)")
    run.add_argument("--out", required=True, help="JSON written after every seed")
    run.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    run.add_argument("--quick", action="store_true", help="seed 0, 6 trials, pool 16, 2 objective windows")
    report = sub.add_parser("report", help="combine runs into results/search_distinct.{md,json}")
    report.add_argument("runs", nargs="+", help="JSON files written by run (the first is the reference)")
    report.add_argument("--name", default="search_distinct", help="results file stem")
    return p.parse_args(argv)


def plan_fingerprint(selection: dict[int, Any], biases: dict | None) -> str:
    """What a masked evaluation depends on: the units removed per layer and the compensation biases."""
    removed = [[i, list(s.heads), list(s.kv_heads), list(s.channels)] for i, s in sorted(selection.items())
               if s.heads or s.kv_heads or s.channels]
    payload = json.dumps({"removed": removed, "biases": biases}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def search_seed(model: Any, tok: Any, texts: list[str], seed: int, quick: bool) -> dict[str, Any]:
    """The default search on ``seed``'s splits, every trial with its fingerprint and whether it was re-scored."""
    import adapruner_lightning.search.runner as runner
    from adapruner_lightning.core.config import PruningConfig
    from adapruner_lightning.core.session import PruningSession
    from adapruner_lightning.data.calibration import make_splits
    from adapruner_lightning.search.config import SearchConfig

    # the scoring method and the windows' keyword under this checkout's names (renamed by issue 32)
    method, keyword = ("score", "objective_windows") if hasattr(PruningSession, "score") else ("objective", "objective")

    pool, windows = (16, 2) if quick else (64, 8)
    search = SearchConfig.of(trials=6, pool_size=pool, objective_windows=windows) if quick else SearchConfig()
    splits = make_splits(tok, texts, n_pool=search.data.pool_size, pool_seq_len=128,
                         n_objective=search.data.objective_windows, objective_seq_len=search.data.objective_seq_len,
                         seed=seed)
    session = PruningSession(model, PruningConfig(target_ratio=0.2, seed=seed), splits.pool,
                             **{keyword: splits.objective}, pool_ids=splits.pool_ids, progress=False)
    evaluated: dict[int, dict[str, Any]] = {}
    current: dict[str, Any] = {}
    score, evaluate_point = getattr(session, method), runner.evaluate_point

    def fingerprinted(selection, biases=None):
        start = time.perf_counter()
        value = score(selection, biases)
        current.update(fingerprint=plan_fingerprint(selection, biases), objective_s=time.perf_counter() - start)
        return value

    def recorded(*args, **kwargs):
        current.clear()
        record = evaluate_point(*args, **kwargs)
        evaluated[record.trial] = dict(current)
        return record

    setattr(session, method, fingerprinted)
    runner.evaluate_point = recorded
    start = time.perf_counter()
    try:
        result = runner.run_search(session, search, progress=False)
    finally:
        runner.evaluate_point = evaluate_point
    return summarise_seed(seed, result, evaluated, time.perf_counter() - start)


def summarise_seed(seed: int, result: Any, evaluated: dict[int, dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Per trial: the fingerprint it was evaluated under (None: not evaluated), re-scored or registered as a repeat."""
    seen: set[str] = set()
    trials = []
    for record in result.trials:
        info = evaluated.get(record.trial, {})
        fingerprint = info.get("fingerprint")
        trials.append({"trial": record.trial, "metric": record.candidate.get("metric"),
                       "scope": record.candidate.get("scope"), "k": len(record.candidate.get("subset", [])),
                       "bias": record.candidate.get("bias_compensation"), "score": record.score,
                       "status": record.status, "fingerprint": fingerprint, "rescored": fingerprint in seen,
                       "repeat_of": getattr(record, "repeat_of", None), "seconds": record.seconds,
                       "objective_s": info.get("objective_s")})
        if fingerprint:
            seen.add(fingerprint)
    evaluations = sum(t["fingerprint"] is not None for t in trials)
    best = result.best.score
    return {"seed": seed, "trials": trials, "evaluations": evaluations, "distinct_evaluated": len(seen),
            "rescored": sum(t["rescored"] for t in trials),
            "repeats_registered": sum(t["repeat_of"] is not None for t in trials),
            "best_score": best, "best_ppl": math.exp(-best), "best_trial": result.best.trial,
            "best_candidate": {k: v for k, v in result.best.candidate.items() if k != "subset"},
            "search_s": seconds, "stats_s": result.stats_seconds}


def run(args: argparse.Namespace) -> int:
    from adapruner_lightning.data.models import load_model
    from adapruner_lightning.data.text import texts_for

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import speed

    torch.set_num_threads(1)
    info = speed.machine_info(torch.device("cpu"))
    model, tok = load_model(None)
    texts = texts_for("austen:calibration")
    out = {"label": args.label, "machine": info, "code": _code_version(), "seeds": []}
    for seed in ([0] if args.quick else args.seeds):
        out["seeds"].append(search_seed(model, tok, texts, seed, args.quick))
        s = out["seeds"][-1]
        print(f"[{args.label}] seed {seed}: {s['evaluations']} evaluations, {s['distinct_evaluated']} distinct, "
              f"{s['rescored']} re-scored, {s['repeats_registered']} repeats registered, best ppl {s['best_ppl']:.3f}, "
              f"{s['search_s']:.0f}s", flush=True)
        Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    return 0


def _code_version() -> str:
    import subprocess

    import adapruner_lightning

    root = Path(adapruner_lightning.__file__).resolve().parents[1]
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip() + f" ({root})"
    except (OSError, subprocess.CalledProcessError):
        return str(root)


def _split_seconds(seed: dict[str, Any]) -> str:
    """Statistics pass, trials (selection + objective, as the trace records them), and the rest: the proposals."""
    trials = sum(t["seconds"] for t in seed["trials"])
    return f"{seed['stats_s']:.0f}, {trials:.0f}, {seed['search_s'] - seed['stats_s'] - trials:.0f}"


def _mean_se(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan"))


def report(args: argparse.Namespace) -> int:
    runs = [json.loads(Path(p).read_text()) for p in args.runs]
    ref = runs[0]
    lines = ["# Distinct plans per trial and best objective at equal budget (issue 35)", "",
             "Default search (`SearchConfig()`: 16 trials, GP, 5 initial points, FLAP's and LLM-Pruner's settings as "
             "warm start) on the embedded SmolLM2-135M at 20 % of total parameters, float32 CPU, one torch thread; "
             "pool 64 x 128 tokens and 8 x 256 objective windows from the four calibration novels "
             "(`make_splits(..., seed)`). An evaluation is *re-scored* when the same removed units and compensation "
             "biases were already evaluated in that search. Shared 2-core machine (4-5 other jobs): times are "
             "indicative only.", ""]
    for r in runs:
        m = r["machine"]
        lines.append(f"- `{r['label']}`: code {r['code']}; {m['date']}; {m['cpu_model']}, {m['cpu_count']} cores; "
                     f"`{m['command']}`")
    lines += ["", "| code | seed | evaluations | distinct plans evaluated | re-scored | repeats registered free | "
              "distinct / evaluation | best objective (-log ppl) | best ppl | best trial (metric, scope) | search s "
              "(statistics, trials, proposals) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for s in r["seeds"]:
            best = s["best_candidate"]
            lines.append(f"| {r['label']} | {s['seed']} | {s['evaluations']} | {s['distinct_evaluated']} | "
                         f"{s['rescored']} | {s['repeats_registered']} | {s['distinct_evaluated'] / s['evaluations']:.2f} | "
                         f"{s['best_score']:.4f} | {s['best_ppl']:.3f} | {s['best_trial']} ({best['metric']}, "
                         f"{best['scope']}) | {s['search_s']:.0f} ({_split_seconds(s)}) |")
    lines += ["", "Paired by seed against the first run (`" + ref["label"] + "`):", "",
              "| code | distinct plans evaluated (mean) | re-scored (mean) | best objective difference, mean +- SE "
              "(positive: better) | best ppl ratio (mean) |", "|---|---|---|---|---|"]
    summary = []
    for r in runs:
        pairs = [(s, next(x for x in ref["seeds"] if x["seed"] == s["seed"])) for s in r["seeds"]
                 if any(x["seed"] == s["seed"] for x in ref["seeds"])]
        diff = [s["best_score"] - b["best_score"] for s, b in pairs]
        mean, se = _mean_se(diff) if diff else (float("nan"), float("nan"))
        ratio = statistics.fmean(s["best_ppl"] / b["best_ppl"] for s, b in pairs) if pairs else float("nan")
        distinct = statistics.fmean(s["distinct_evaluated"] for s in r["seeds"])
        rescored = statistics.fmean(s["rescored"] for s in r["seeds"])
        summary.append({"label": r["label"], "seeds": [s["seed"] for s, _ in pairs], "best_diff": diff,
                        "best_diff_mean": mean, "best_diff_se": se, "ppl_ratio_mean": ratio,
                        "distinct_mean": distinct, "rescored_mean": rescored})
        lines.append(f"| {r['label']} | {distinct:.1f} | {rescored:.1f} | {mean:+.4f} +- {se:.4f} | {ratio:.4f} |")
    lines += ["", "What was evaluated again, and what was registered without an evaluation (trial: metric, scope, k):", ""]
    for r in runs:
        for s in r["seeds"]:
            again = [f"{t['trial']}: {t['metric']}, {t['scope']}, {t['k']}" for t in s["trials"] if t["rescored"]]
            free = [f"{t['trial']} (= {t['repeat_of']}): {t['metric']}, {t['scope']}, {t['k']}" for t in s["trials"]
                    if t["repeat_of"] is not None]
            lines.append(f"- {r['label']}, seed {s['seed']}: re-scored [{'; '.join(again)}]; repeats registered free "
                         f"[{'; '.join(free)}]")
    lines.append("")
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{args.name}.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=1,
                                                              default=str))
    (RESULTS_DIR / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    raise SystemExit(main())
