"""The run report: ``report.json`` (everything) and a concise ``report.md`` (quality by stage with ratios to dense,
the search's summary, per-layer widths, wall times), the search plot, and the end-of-fit outputs."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from adapruner_lightning.core.plan import PLAN_FILE, PruningPlan
from adapruner_lightning.data.text import atomic_path, write_text_atomic
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.evaluation.config import EvalConfig
from adapruner_lightning.outputs.tables import fmt, quality_table, search_lines, widths_table


def plot_search(trials: list[dict[str, Any]], plan: PruningPlan | None, path: str | Path) -> Path | None:
    """PNG: objective per trial with best-so-far, and the per-layer widths of the best plan (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ok = [(t["trial"], t["score"]) for t in trials if t.get("status") == "ok"]
    failed = [t["trial"] for t in trials if t.get("status") != "ok"]
    if ok:
        xs, ys = zip(*ok)
        ax1.plot(xs, [math.exp(-y) for y in ys], "o", label="trial")
        best, running = [], float("inf")
        for y in ys:
            running = min(running, math.exp(-y))
            best.append(running)
        ax1.plot(xs, best, "-", label="best so far")
    for x in failed:
        ax1.axvline(x, color="red", alpha=0.3)
    ax1.set(xlabel="trial", ylabel="objective perplexity (masked)", title="search trace", yscale="log")
    ax1.legend()
    if plan is not None:
        idx = [lp.index for lp in plan.layers]
        ax2.bar(idx, [lp.intermediate_size / plan.original_intermediate_size for lp in plan.layers], label="MLP kept")
        ax2.plot(idx, [lp.num_heads / plan.original_num_heads for lp in plan.layers], "k.-", label="heads kept")
        ax2.set(xlabel="layer", ylabel="fraction kept", title="best plan", ylim=(0, 1.05))
        ax2.legend()
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:  # a full disk keeps the previous plot
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path


def write_report(directory: str | Path, report: dict[str, Any], plan: PruningPlan | None = None) -> tuple[Path, Path]:
    """Write ``report.json`` (everything, for programs) and ``report.md`` (:func:`to_markdown`, for people) into
    ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path = write_text_atomic(directory / "report.json", json.dumps(report, indent=1, default=str))
    return json_path, write_text_atomic(directory / "report.md", to_markdown(report, plan))


def to_markdown(report: dict[str, Any], plan: PruningPlan | None = None) -> str:
    """The concise report a person reads: parameters, quality by stage with ratios to dense, what the search did
    and chose, the per-layer widths (consecutive equal layers in one row) and the time per phase. The full plan
    is ``pruning_plan.json`` beside it."""
    lines = ["# adapruner report", ""]
    params = report.get("params", {})
    if params:
        lines += [f"Parameters: {fmt(params.get('before'))} -> {fmt(params.get('after'))} "
                  f"({params.get('removed_ratio', 0):.1%} removed" +
                  (f", target {plan.target_ratio:.0%} of the {plan.ratio_basis} count)" if plan else ")"), ""]
    quality = quality_table(report.get("quality", {}))
    if quality:
        lines += ["## Quality", "", *quality, "",
                  "Perplexity (`ppl/...`, lower is better) on held-out text; zero-shot accuracy (`acc/...`).", ""]
    search = search_lines(report.get("search", {}))
    if search:
        lines += ["## Search", "", *search, ""]
        if (report.get("files") or {}).get("plot"):
            lines += ["![search trace and widths](search_trace.png)", ""]
    if plan is not None:
        lines += ["## Per-layer widths", "", *widths_table(plan), "", f"The full plan: `{PLAN_FILE}`.", ""]
    seconds = report.get("seconds", {})
    if seconds:
        lines += ["## Time", "", "| phase | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in seconds.items()] + [""]
    return "\n".join(lines)


def flatten_eval(result: Any) -> dict[str, float]:
    """One flat dict (``ppl/<text>``, ``acc/<task>``, ``acc_norm/<task>``, ``ppl/<task>`` of log-likelihood tasks
    such as LAMBADA) from an EvalResult."""
    out = {f"ppl/{k}": v for k, v in result.perplexity.items()}
    for task, scores in result.zeroshot.items():
        if "perplexity" in scores:
            out[f"ppl/{task}"] = scores["perplexity"]
        for key in ("acc", "acc_norm"):
            if key in scores:
                out[f"{key}/{task}"] = scores[key]
    return out


def evaluate_stage(model: Any, tokenizer: Any, config: EvalConfig, *,
                   progress: bool = True) -> tuple[dict[str, float], float]:
    """Held-out quality of ``model`` for one report stage: ``(flat scores, seconds)`` (see :func:`flatten_eval`).

    Raises:
        ConfigError: no tokenizer (the LightningModule needs a ``.tokenizer`` attribute to evaluate).
    """
    from adapruner_lightning.data.text import texts_for
    from adapruner_lightning.evaluation.evaluate import evaluate_model

    if tokenizer is None:
        raise ConfigError("eval.texts", config.texts, "a LightningModule with a .tokenizer attribute",
                          hint="set module.tokenizer or drop eval.texts")
    start = time.perf_counter()
    result = evaluate_model(model, tokenizer, texts_for(config.texts or []), tasks=config.tasks,
                            max_tokens=config.max_tokens, n_items=config.items, progress=progress)
    return flatten_eval(result), time.perf_counter() - start


def write_outputs(out_dir: Path, model: Any, tokenizer: Any, plan: PruningPlan, trace: list[dict[str, Any]],
                  report: dict[str, Any], *, export: bool, gguf: str | None = None) -> Path:
    """The end-of-fit outputs: search plot, export with its model card (unless ``model`` still carries adapters),
    the GGUF file when ``gguf`` names an outtype, plan, report.

    Returns:
        The path of ``report.md``.

    Raises:
        ConfigError: ``out_dir`` holds a ``pruned_model`` directory or ``pruned_model.gguf`` file that is not an
            export of ours, or is the model's own directory (checked before anything is written).
    """
    from adapruner_lightning.outputs.export import save_pruned
    from adapruner_lightning.outputs.guard import FIT_EXPORT, FIT_GGUF, check_fit_outputs, local_model_paths

    exporting = export and not hasattr(model, "peft_config")
    check_fit_outputs(out_dir, inputs=local_model_paths(model), export=exporting, gguf=exporting and bool(gguf))
    plot = plot_search(trace, plan, out_dir / "search_trace.png") if trace else None
    report["plan"] = plan_summary(plan)
    report["files"] = {"plot": str(plot) if plot else None, "plan": str(out_dir / PLAN_FILE)}
    if exporting:
        start = time.perf_counter()
        save_pruned(model, tokenizer, out_dir / FIT_EXPORT, plan, report=report)
        report["seconds"]["export"] = time.perf_counter() - start
        report["files"]["model"] = str(out_dir / FIT_EXPORT)
        if gguf:
            from adapruner_lightning.outputs.gguf import export_gguf

            start = time.perf_counter()
            report["files"]["gguf"] = str(export_gguf(model, tokenizer, out_dir / FIT_GGUF, outtype=gguf).path)
            report["seconds"]["export_gguf"] = time.perf_counter() - start
    plan.save(out_dir / PLAN_FILE)
    return write_report(out_dir, report, plan)[1]


def plan_summary(plan: PruningPlan) -> dict[str, Any]:
    """The plan in the report: removed share, shape kind and compensation (the whole plan is ``pruning_plan.json``)."""
    return {"achieved_ratio": plan.achieved_ratio, "uniform": plan.is_uniform, "compensated": plan.compensated}
