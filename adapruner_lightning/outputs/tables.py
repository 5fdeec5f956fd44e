"""Markdown tables of a run, shared by the report (``report.md``) and the model card of an export.

* :func:`quality_table`: one row per measure (``ppl/<text>``, ``acc/<task>`` ...), one column per stage (dense,
  pruned, recovered) and each later stage as a ratio to dense.
* :func:`widths_table`: the per-layer widths of a plan, consecutive layers of equal width in one row.
* :func:`search_lines`: what the search did and chose, in a few lines.
"""

from __future__ import annotations

import math
from typing import Any

from adapruner_lightning.core.plan import PruningPlan

#: the order stages are shown in (others follow in the report's order)
STAGES = ("dense", "pruned", "recovered")


def fmt(value: Any) -> str:
    """A number as a table shows it (4 significant digits; integers with thousands separators)."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def quality_table(quality: dict[str, dict[str, float]]) -> list[str]:
    """Rows of the quality table: each measure by stage, then each later stage over dense (``1.05x``). For
    perplexities above 1x is worse, for accuracies below 1x. Empty when nothing was measured."""
    stages = [s for s in STAGES if s in quality] + [s for s in quality if s not in STAGES]
    if not stages:
        return []
    ratios = [s for s in stages if s != "dense"] if "dense" in quality else []
    header = ["measure", *stages, *[f"{s} / dense" for s in ratios]]
    rows = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for key in sorted({k for scores in quality.values() for k in scores}):
        cells = [fmt(quality[s].get(key)) for s in stages]
        dense = quality.get("dense", {}).get(key)
        for stage in ratios:
            value = quality[stage].get(key)
            ok = isinstance(dense, (int, float)) and isinstance(value, (int, float)) and dense and math.isfinite(value)
            cells.append(f"{value / dense:.3f}x" if ok else "")
        rows.append(f"| {key} | " + " | ".join(cells) + " |")
    return rows


def _width_runs(plan: PruningPlan) -> list[tuple[int, int, tuple[int, int, int]]]:
    """(first layer, last layer, widths) of each run of consecutive layers with equal widths."""
    runs: list[tuple[int, int, tuple[int, int, int]]] = []
    for lp in plan.layers:
        widths = (lp.num_heads, lp.num_kv_heads, lp.intermediate_size)
        if runs and runs[-1][2] == widths and runs[-1][1] == lp.index - 1:
            runs[-1] = (runs[-1][0], lp.index, widths)
        else:
            runs.append((lp.index, lp.index, widths))
    return runs


def widths_table(plan: PruningPlan, *, grouped: bool = True) -> list[str]:
    """Rows of the per-layer widths table (kept / original), one row per run of equal layers when ``grouped``."""
    rows = ["| layer | query heads | kv heads | MLP channels |", "|---|---|---|---|"]
    runs = _width_runs(plan) if grouped else [(lp.index, lp.index, (lp.num_heads, lp.num_kv_heads,
                                                                      lp.intermediate_size)) for lp in plan.layers]
    for first, last, (heads, kv, channels) in runs:
        layers = str(first) if first == last else f"{first}-{last}"
        rows.append(f"| {layers} | {heads} / {plan.original_num_heads} | {kv} / {plan.original_num_kv_heads} | "
                    f"{channels} / {plan.original_intermediate_size} |")
    return rows


def _choice(chose: dict[str, Any]) -> str:
    """``metric=flap, reducer=sum, ...`` of a search summary's ``chose`` (unset entries left out)."""
    return ", ".join(f"{k}={fmt(v)}" for k, v in chose.items() if v is not None)


def search_lines(search: dict[str, Any]) -> list[str]:
    """Bullet lines of a search summary (``SearchResult.summary()``): trials, the best one, its choice, the time."""
    if not search:
        return []
    chose = _choice(search.get("chose", {}))
    seconds = f" in {search['seconds']:.0f} s" if search.get("seconds") is not None else ""
    if search.get("seconds") and search.get("flap_seconds"):
        seconds += (f" ({search['seconds'] / search['flap_seconds']:.1f}x FLAP's prune time on this machine, "
                    f"{search['flap_seconds']:.0f} s)")
    if not search.get("trials"):
        return [f"- no search (`trials=0`): the configured candidate{seconds}", f"- chose: {chose}"]
    score, kind = search.get("best_score"), search.get("objective") or "perplexity"
    best = (f"KL {-score:.4g}" if kind == "kl" else f"objective perplexity {math.exp(-score):.4g}") \
        if isinstance(score, (int, float)) else "n/a"
    distinct = (f"; {search['plans_scored']} distinct plans scored, {search.get('trials_saved', 0)} repeated plans "
                f"registered at no cost{' (the space is exhausted)' if search.get('exhausted') else ''}"
                if search.get("plans_scored") is not None else "")
    return [f"- trials: {search['trials']} ({search.get('failed', 0)} failed{distinct}){seconds}",
            f"- best trial: {search.get('best_trial')} ({best}, on the held-apart objective windows, under masks)",
            f"- chose: {chose}", *_stage_lines(search.get("stages") or {})]


def _stage_lines(stages: dict[str, dict[str, Any]]) -> list[str]:
    """A line for each stage after the search (:meth:`SearchResult.summary`'s ``stages``): what it did."""
    lines = []
    if "allocation" in stages:
        a = stages["allocation"]
        stopped = f", stopped by the {a['stopped']}" if a.get("stopped") else ""
        lines.append(f"- allocation stage: {a['generations_run']} of {a['generations']} generations in "
                     f"{a['seconds']:.0f} s{stopped}; KL from the dense model {a['kl_seeds'][a['start']]:.4g} "
                     f"({a['start']}) -> {a['kl']:.4g}, {a['improvements']} improvements")
    if "training_aware" in stages:
        t = stages["training_aware"]
        lines.append(f"- training-aware stage: the {len(t['trials'])} best plans trained {t['steps']} steps each; "
                     f"kept trial {t['chose']}")  # fewer than `candidates` when the search made fewer distinct plans
    return lines
