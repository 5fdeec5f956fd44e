"""The model card (``README.md``) written into every export directory: what was removed, the per-layer widths,
parameters before and after, the measured quality from the run's report, and how to load the model."""

from __future__ import annotations

from typing import Any

from adapruner_lightning.core.plan import PruningPlan
from adapruner_lightning.outputs.tables import quality_table, widths_table


def _removed(plan: PruningPlan) -> list[str]:
    heads = sum(plan.original_num_heads - lp.num_heads for lp in plan.layers)
    kv = sum(plan.original_num_kv_heads - lp.num_kv_heads for lp in plan.layers)
    channels = sum(plan.original_intermediate_size - lp.intermediate_size for lp in plan.layers)
    n = plan.num_layers
    return [f"- query heads: {heads} of {n * plan.original_num_heads}",
            f"- key/value heads: {kv} of {n * plan.original_num_kv_heads}",
            f"- MLP channels: {channels} of {n * plan.original_intermediate_size}",
            f"- reconstruction: {_RECONSTRUCTION[plan.reconstruction]}{_fit_data(plan)}"]


_RECONSTRUCTION = {"none": "none", "bias": "FLAP's bias compensation (the removed inputs' mean as o_proj/down_proj biases)",
                   "lstsq": "least squares (the kept o_proj/down_proj columns re-fitted to the dense layer's output "
                            "on calibration data, with a bias)"}


def _fit_data(plan: PruningPlan) -> str:
    """What a least-squares repair fitted on: the calibration tokens, the pool's and the reconstruction windows'."""
    fit = (plan.provenance or {}).get("reconstruction_fit")
    if plan.reconstruction != "lstsq" or not fit or "tokens" not in fit:
        return ""
    windows = fit.get("reconstruction_windows")
    extra = f", the pool and {windows['shape'][0]} more windows" if windows else ", the pool"
    return f", fitted on {fit['tokens']:,} calibration tokens{extra}"


def _stages(plan: PruningPlan) -> list[str]:
    """What the search did after its trials (the training-aware selection, the allocation stage) and the whole
    blocks the plan removes."""
    provenance, lines = plan.provenance or {}, []
    trained = provenance.get("training_aware")
    if trained:
        lines.append(f"- training-aware selection: the search's {len(trained['trials'])} best plans trained "
                     f"{trained['steps']} steps each on the calibration pool, trial {trained['chose']} kept")
    allocation = provenance.get("allocation")
    if allocation:
        lines.append(f"- per-layer allocation: {allocation['generations']} generations of "
                     f"{allocation['offspring']} offspring, KL from the dense model {allocation['kl']:.4f}")
    blocks = plan.removed_blocks
    for kind in ("attention", "mlp"):
        if blocks[kind]:
            lines.append(f"- whole {'attention' if kind == 'attention' else 'MLP'} blocks removed: layers "
                         f"{', '.join(map(str, blocks[kind]))}")
    return lines


def _quality(report: dict[str, Any]) -> list[str]:
    rows = quality_table(report.get("quality") or {})
    if not rows:
        return ["Not measured in this run (see `adapruner eval --model <this directory>`)."]
    return rows + ["", "Perplexity (`ppl/...`) on held-out text, accuracy (`acc/...`) zero-shot; from `report.json`."]


def _loading(plan: PruningPlan, name: str) -> list[str]:
    plain = plan.is_uniform and not plan.compensated
    lines = ["```python", "from adapruner_lightning import load_pruned", "",
             f'model, tokenizer, plan = load_pruned("{name}")  # any plan', "```", ""]
    if plain:
        lines += ["Uniform plan: plain transformers loads it too.", "", "```python",
                  "from transformers import AutoModelForCausalLM", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{name}")', "```", ""]
    else:
        lines += ["The layers differ in width (or carry compensation biases), which transformers' configs cannot "
                  "describe: load it with `load_pruned`, or run the GGUF in llama.cpp.", ""]
    lines += ["llama.cpp (per-layer widths through its `deci` architecture when the plan is not uniform):", "",
              "```bash", f"adapruner export {name} --gguf model.gguf --outtype f16",
              "llama-cli -m model.gguf -p 'It is a truth universally acknowledged'", "```"]
    return lines


def model_card(plan: PruningPlan, *, base_model: str | None = None, report: dict[str, Any] | None = None,
               name: str = "<this directory>") -> str:
    """The Markdown model card of an export of ``plan`` (``report``: the run's report dict, for quality)."""
    provenance = plan.provenance or {}
    method = ", ".join(f"{k}={provenance[k]}" for k in ("metric", "reducer", "scope", "keep_first", "keep_last")
                       if k in provenance)
    lines = [f"# {base_model or plan.model_type}, structurally pruned by adapruner-lightning", "",
             f"- base model: `{base_model or 'unknown'}` ({plan.model_type}, {plan.num_layers} layers)",
             f"- parameters: {plan.params_before:,} before, {plan.params_after:,} after "
             f"({plan.achieved_ratio:.1%} removed, target {plan.target_ratio:.0%} of the {plan.ratio_basis} count)",
             f"- plan: {'uniform' if plan.is_uniform else 'non-uniform (layers differ in width)'}"
             + (f"; {method}" if method else ""), "", "## What was removed", "", *_removed(plan), *_stages(plan), "",
             "## Per-layer widths", "", *widths_table(plan, grouped=False), "", "## Measured quality", "",
             *_quality(report or {}), "", "## How to load", "", *_loading(plan, name), ""]
    return "\n".join(lines)
