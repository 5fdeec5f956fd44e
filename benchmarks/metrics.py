"""Every importance metric at one target, same calibration samples, same held-out tokens; and why L2 collapses.

On the embedded model (SmolLM2-135M), one :class:`PruningSession` over the calibration pool of
``benchmarks/quality.py`` (64 x 128 tokens from the four calibration novels, seed 0), the same ``--samples``
seeded random samples for every metric, reducer ``sum``, layerwise selection, no layers kept whole (plus the
LLM-Pruner layer range ``[4, N-2)`` as a second column). Each selection is scored under reversible masks (the
same logits as the physically pruned model, ``tests/test_prune.py``) by perplexity on the first
``--eval-tokens`` tokens of each evaluation novel (Persuasion, Northanger Abbey; never used for calibration).

The diagnosis part looks at the removed MLP channels of each metric: a channel's *activation energy* is
``sum_t x^2`` of its ``down_proj`` input over the calibration samples (the Wanda-sp statistic). It lists the
removed channels whose energy is largest relative to their layer's median, then restores only those channels
(a few thousand parameters) and measures the perplexity again: if that repairs the model, the collapse comes
from removing a handful of "massive activation" channels the metric cannot see, not from a pruning bug.

    python benchmarks/metrics.py                 # ~10 min on 2 CPU cores
    python benchmarks/metrics.py --eval-tokens 2048 --metrics magnitude_l2 wanda_sp
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _parser() -> argparse.ArgumentParser:
    from adapruner_lightning.core.importance import metric_names

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ratio", type=float, default=0.2, help="fraction of total parameters removed")
    p.add_argument("--samples", type=int, default=10, help="seeded random calibration samples, shared by all metrics")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--metrics", nargs="+", default=metric_names(), choices=metric_names())
    p.add_argument("--eval-tokens", type=int, default=8192, help="perplexity tokens per evaluation novel")
    p.add_argument("--restore", type=int, default=4, help="removed high-energy channels restored in the diagnosis")
    p.add_argument("--restore-above", type=float, default=None,
                   help="instead: restore every removed channel whose energy is at least this multiple of its "
                        "layer's median")
    p.add_argument("--split", action="store_true",
                   help="also score the attention part and the MLP part of each selection alone")
    p.add_argument("--bias-compensation", action="store_true",
                   help="also prune physically with FLAP bias compensation (all layers) and score that")
    p.add_argument("--name", default="metrics", help="results file stem (<name>.md / .json)")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return p


def held_out_ppl(session, selection, windows: dict[str, torch.Tensor]) -> dict[str, float]:
    """Perplexity per evaluation novel of the model as if ``selection`` were removed."""
    from adapruner_lightning.core.masking import masked
    from adapruner_lightning.evaluation.metrics import evaluate_perplexity

    with masked(session.layers, selection):
        return {name: evaluate_perplexity(session.model, w, progress=False) for name, w in windows.items()}


def energy_outliers(session, candidate, selection, top: int, above: float | None = None) -> list[dict[str, Any]]:
    """Removed MLP channels with the largest activation energy relative to their layer's median (the ``top`` ones,
    or all of at least ``above`` times the median)."""
    stats = session.stats.reduce(candidate.subset)
    found = []
    for i, sel in selection.items():
        if not sel.channels:
            continue
        energy = stats[i]["sq:down"]
        median = float(energy.median()) or 1e-30
        for c in sel.channels:
            found.append({"layer": i, "channel": c, "x_median": float(energy[c]) / median,
                          "rank_in_layer": int((energy > energy[c]).sum()) + 1})
    found.sort(key=lambda d: -d["x_median"])
    return [d for d in found if d["x_median"] >= above] if above is not None else found[:top]


def energy_correlation(session, candidate) -> float:
    """Mean over pruned layers of the Spearman correlation between a metric's MLP channel scores and the
    channels' activation energy (sum x^2 at the down_proj input over the candidate's samples)."""
    stats = session.stats.reduce(candidate.subset)
    rank = lambda t: torch.argsort(torch.argsort(t)).double()  # noqa: E731
    corr = []
    for i, scores in session.unit_scores(candidate).items():
        a, b = rank(scores.channels.double()), rank(stats[i]["sq:down"].double())
        corr.append(float(torch.corrcoef(torch.stack([a, b]))[0, 1]))
    return sum(corr) / len(corr)


def _restored(selection, channels: list[dict[str, Any]]):
    out = copy.deepcopy(selection)
    for d in channels:
        out[d["layer"]].channels.remove(d["channel"])
    return out


def compensated_ppl(session, candidate, selection, windows: dict[str, torch.Tensor]) -> dict[str, float]:
    """Perplexity of a physically pruned copy carrying FLAP's bias compensation."""
    from adapruner_lightning.evaluation.metrics import evaluate_perplexity
    from adapruner_lightning.core.physical import apply_plan

    pruned = apply_plan(copy.deepcopy(session.model), session.plan(candidate, selection))
    out = {name: evaluate_perplexity(pruned, w, progress=False) for name, w in windows.items()}
    del pruned
    return out


def _part(selection, which: str):
    """Only the attention (heads) or only the MLP (channels) removals of a selection."""
    out = copy.deepcopy(selection)
    for sel in out.values():
        if which == "attention":
            sel.channels = []
        else:
            sel.heads, sel.kv_heads = [], []
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Score every metric (two layer ranges) and diagnose the removed high-energy channels."""
    from adapruner_lightning.data.calibration import make_splits
    from adapruner_lightning.core.config import PruningConfig
    from adapruner_lightning.data.text import texts_for, tokenize_windows
    from adapruner_lightning.data.models import load_model
    from adapruner_lightning.core.session import PruningSession

    model, tok = load_model(None)
    splits = make_splits(tok, texts_for("austen:calibration"), n_pool=64, pool_seq_len=128, n_objective=8,
                         objective_seq_len=256, seed=args.seed)
    windows = {name: tokenize_windows(tok, text, 256, max_windows=args.eval_tokens // 256)
               for name, text in texts_for("austen:evaluation").items()}
    session = PruningSession(model, PruningConfig(target_ratio=args.ratio, seed=args.seed, num_samples=args.samples,
                                                           bias_compensation=args.bias_compensation),
                             splits.pool, pool_ids=splits.pool_ids, progress=False)
    base = session.default_candidate()
    rows = [{"metric": "dense", **held_out_ppl(session, {}, windows)}]
    print(f"dense {rows[0]}", flush=True)
    for metric in args.metrics:
        start = time.perf_counter()
        row: dict[str, Any] = {"metric": metric}
        for label, keep in (("all", (0, 0)), ("llm_pruner_range", (4, 2))):
            cand = dataclasses.replace(base, metric=metric, keep_first=keep[0], keep_last=keep[1])
            selection = session.select(cand)
            row[label] = held_out_ppl(session, selection, windows)
            if label == "all":
                outliers = energy_outliers(session, cand, selection, args.restore, args.restore_above)
                row["outliers"] = outliers
                row["restored"] = held_out_ppl(session, _restored(selection, outliers), windows)
                row["attn_heads_removed"] = sum(len(s.heads) for s in selection.values())
                row["energy_spearman"] = energy_correlation(session, cand)
                if args.bias_compensation:
                    row["compensated"] = compensated_ppl(session, cand, selection, windows)
                if args.split:
                    row["attn_only"] = held_out_ppl(session, _part(selection, "attention"), windows)
                    row["mlp_only"] = held_out_ppl(session, _part(selection, "mlp"), windows)
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        print(f"{metric}: {row['all']} | kept [4,N-2): {row['llm_pruner_range']} | restored {row['restored']} "
              f"({row['seconds']:.0f}s)", flush=True)
    return {"rows": rows, "sample_ids": [splits.pool_ids[i] for i in base.subset],
            "removed": session.plan(base).achieved_ratio}


def _fmt(ppl: dict[str, float]) -> str:
    return " | ".join(f"{v:,.2f}" for v in ppl.values())


def render(result: dict[str, Any], args: argparse.Namespace, info: dict[str, Any]) -> str:
    """Markdown: the per-metric table and the diagnosis."""
    rows = result["rows"]
    names = list(rows[0].keys())[1:]
    restored = (f"removed channels >= {args.restore_above:g}x median energy" if args.restore_above is not None
                else f"{args.restore} highest-energy channels")
    L = ["# Importance metrics side by side (adapruner-lightning)", "",
         f"- date: {info['date']}; machine: {info['platform']}, {info['cpu_count']} cores, torch {info['torch']}; "
         f"wall time {result['wall_seconds']:.0f} s",
         f"- command: `{info['command']}`",
         f"- embedded SmolLM2-135M, {result['removed']:.2%} of total parameters removed (target {args.ratio:.0%}), "
         f"layerwise, reducer sum; the same {args.samples} random calibration samples for every metric "
         f"(seed {args.seed}: {', '.join(result['sample_ids'])}); perplexity on the first {args.eval_tokens} tokens "
         "of each evaluation novel (seq 256), masked model (= physically pruned logits)", "",
         "| metric | " + " | ".join(f"ppl {n} (all layers)" for n in names)
         + " | " + " | ".join(f"ppl {n} (layers [4, N-2))" for n in names)
         + " | " + " | ".join(f"ppl {n}, {restored} restored" for n in names) + " |",
         "|---|" + "---:|" * (3 * len(names))]
    for r in rows:
        if r["metric"] == "dense":
            dense = _fmt({n: r[n] for n in names})
            L.append(f"| dense | {dense} | {dense} | {dense} |")
            continue
        L.append(f"| {r['metric']} | {_fmt(r['all'])} | {_fmt(r['llm_pruner_range'])} | {_fmt(r['restored'])} "
                 f"({len(r['outliers'])} channels) |")
    if any("attn_only" in r for r in rows):
        L += ["", "Each selection split (all layers): its attention removals alone, its MLP removals alone:", "",
              "| metric | query heads removed | " + " | ".join(f"ppl {n}, attention part only" for n in names) + " | "
              + " | ".join(f"ppl {n}, MLP part only" for n in names) + " |", "|---|---:|" + "---:|" * (2 * len(names))]
        for r in rows[1:]:
            if "attn_only" in r:
                L.append(f"| {r['metric']} | {r['attn_heads_removed']} | {_fmt(r['attn_only'])} | {_fmt(r['mlp_only'])} |")
    if any("compensated" in r for r in rows):
        L += ["", "FLAP bias compensation (physically pruned, all layers; the same selections as the first columns):",
              "", "| metric | " + " | ".join(f"ppl {n} without" for n in names) + " | "
              + " | ".join(f"ppl {n} with bias compensation" for n in names) + " |", "|---|" + "---:|" * (2 * len(names))]
        for r in rows[1:]:
            L.append(f"| {r['metric']} | {_fmt(r['all'])} | {_fmt(r['compensated'])} |")
    L += ["", "Removed MLP channels with the highest activation energy (sum x^2 at the down_proj input over the "
          "calibration samples, as a multiple of the layer's median channel):", "",
          "| metric | Spearman(channel score, energy), mean over layers | channels (layer:channel, x median, rank in layer) |",
          "|---|---:|---|"]
    for r in rows[1:]:
        L.append(f"| {r['metric']} | {r.get('energy_spearman', float('nan')):+.3f} | " + ", ".join(f"{o['layer']}:{o['channel']} ({o['x_median']:,.0f}x, #{o['rank_in_layer']})"
                                                  for o in r["outliers"][:6]) + " |")
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from bench_common import machine_info, write_results

    start = time.perf_counter()
    info = machine_info(torch.device("cpu"))
    result = run(args)
    result["wall_seconds"] = time.perf_counter() - start
    result["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    text = render(result, args, info)
    result["machine"] = info
    write_results(args.out_dir, args.name, result, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
