"""Physical pruning: turn a selection into a :class:`PruningPlan` and apply a plan to a model.

Attention rows/columns are removed with torch-pruning's low-level ``prune_linear_out_channels`` /
``prune_linear_in_channels`` driven by the architecture table (GQA-aware); MLP channels through
torch-pruning's traced ``DependencyGraph`` group (gate/up rows + down columns), whose coupling is checked
first. The HF config is rewritten (``head_dim`` always explicit); per-layer GQA factors are set on each
attention module, so non-uniform layers run ``forward`` and ``generate`` with a KV cache.
"""

from __future__ import annotations

import torch
from torch import nn

from adapruner_lightning.core.architectures import get_architecture, head_layout
from adapruner_lightning.core.groups import (
    FusedRows,
    LayerStructure,
    build_dependency_graph,
    check_mlp_coupling,
    layer_structures,
    mlp_group,
    output_site,
    total_params,
)
from adapruner_lightning.core.masking import add_bias
from adapruner_lightning.core.plan import LayerPlan, PruningPlan, library_versions
from adapruner_lightning.core.reconstruction import LeastSquares, write_fits
from adapruner_lightning.core.selection import LayerSelection
from adapruner_lightning.errors import ConfigError


def make_plan(model: nn.Module, selection: dict[int, LayerSelection], *, target_ratio: float = 0.0,
              ratio_basis: str = "total", provenance: dict | None = None,
              biases: dict[int, dict[str, list[float]]] | None = None) -> PruningPlan:
    """Describe ``selection`` on ``model`` (unpruned) as a :class:`PruningPlan`, with resulting shapes and counts.

    ``biases`` (from :func:`compensation_biases`) adds FLAP bias compensation: ``{layer: {"o": [...], "down": [...]}}``.
    A selection that removes whole blocks (every head or every MLP channel of a layer) is recorded in the provenance
    (``removed_blocks``) and written as plan version 2, which older readers refuse instead of misapplying.
    """
    layers = layer_structures(model)
    layout = head_layout(model.config)
    before = total_params(model)
    removed = 0
    plans = []
    for layer in layers:
        sel = selection.get(layer.index, LayerSelection())
        bias = (biases or {}).get(layer.index, {})
        removed += sel.removed_params(layer) - len(bias.get("o", [])) - len(bias.get("down", []))
        plans.append(LayerPlan(o_bias=bias.get("o"), down_bias=bias.get("down"),
            index=layer.index, heads_removed=list(sel.heads), kv_heads_removed=list(sel.kv_heads),
            channels_removed=list(sel.channels), num_heads=layer.num_heads - len(sel.heads),
            num_kv_heads=layer.num_kv_heads - len(sel.kv_heads), intermediate_size=layer.intermediate - len(sel.channels),
        ))
    plan = PruningPlan(
        model_type=model.config.model_type, num_layers=len(layers), hidden_size=layout.hidden_size,
        head_dim=layout.head_dim, original_num_heads=layout.num_heads, original_num_kv_heads=layout.num_kv_heads,
        original_intermediate_size=layout.intermediate_size, layers=plans, params_before=before,
        params_after=before - removed, target_ratio=target_ratio, ratio_basis=ratio_basis,
        provenance={**(provenance or {}), "versions": library_versions()},
    )
    if plan.removes_blocks:
        plan.provenance["removed_blocks"] = plan.removed_blocks
    else:
        plan.version = 1  # nothing version 2 added: older readers load it
    return plan


@torch.no_grad()
def compensation_biases(layers: list[LayerStructure], selection: dict[int, LayerSelection],
                        activation_stats: list[dict[str, torch.Tensor]]) -> dict[int, dict[str, list[float]]]:
    """FLAP's bias compensation: ``W[:, removed] @ mean(x[removed])`` for ``o_proj`` and ``down_proj`` per layer.

    ``activation_stats`` are the calibration sums of :meth:`StatsCache.reduce` (``sum:o``, ``sum:down``,
    ``tokens``), so the added bias is the removed channels' mean contribution on the calibration samples. A block
    removed whole gets none (:meth:`~adapruner_lightning.core.selection.LayerSelection.removes_block_of`).
    """
    out: dict[int, dict[str, list[float]]] = {}
    for i, sel in selection.items():
        layer, stats = layers[i], activation_stats[i]
        tokens = float(stats["tokens"])
        parts = {}
        for name, module, cols in (("o", layer.o, _rows(sel.heads, layer.head_dim)), ("down", layer.down, sel.channels)):
            if cols and not sel.removes_block_of(layer, name):
                idx = torch.as_tensor(cols, dtype=torch.long)
                mean = (stats[f"sum:{name}"][idx] / tokens).to(module.weight.device, torch.float32)
                parts[name] = (module.weight[:, idx.to(module.weight.device)].float() @ mean).cpu().tolist()
        if parts:
            out[i] = parts
    return out


def check_plan_fits(model: nn.Module, plan: PruningPlan) -> list[LayerStructure]:
    """Raise a clear :class:`ConfigError` unless ``plan`` was made for a model shaped like ``model``."""
    layers = layer_structures(model)
    layout = head_layout(model.config)
    got = (model.config.model_type, len(layers), layout.hidden_size, layout.head_dim)
    want = (plan.model_type, plan.num_layers, plan.hidden_size, plan.head_dim)
    if got != want:
        raise ConfigError("pruning plan", f"made for (type, layers, hidden, head_dim)={want}", f"a plan for {got}",
                          hint="use the plan saved with this model, or search a new one")
    if len(plan.layers) != len(layers):
        raise ConfigError("pruning plan layers", f"{len(plan.layers)} entries", f"one entry per decoder layer "
                          f"({len(layers)})", hint="the plan file was edited or truncated")
    for layer, lp in zip(layers, plan.layers):
        shape = (layer.num_heads, layer.num_kv_heads, layer.intermediate)
        expected = (lp.num_heads + len(lp.heads_removed), lp.num_kv_heads + len(lp.kv_heads_removed),
                    lp.intermediate_size + len(lp.channels_removed))
        if shape != expected:
            raise ConfigError(f"pruning plan, layer {lp.index}", f"(heads, kv, mlp)={expected} before pruning",
                              f"the model's {shape}", hint="the plan belongs to another model or was already applied")
        _check_layer_indices(layer, lp)
    return layers


def _check_layer_indices(layer: LayerStructure, lp: LayerPlan) -> None:
    """Raise unless the plan's indices exist, are distinct, and keep every KV group's query heads uniform."""
    what = f"pruning plan, layer {lp.index}"
    for name, idxs, n in (("heads_removed", lp.heads_removed, layer.num_heads),
                          ("kv_heads_removed", lp.kv_heads_removed, layer.num_kv_heads),
                          ("channels_removed", lp.channels_removed, layer.intermediate)):
        if len(set(idxs)) != len(idxs) or any(not 0 <= int(i) < n for i in idxs):
            raise ConfigError(f"{what}, {name}", sorted(idxs)[:8], f"distinct indices in [0, {n})",
                              hint="the plan file was edited or belongs to another model")
    qpk, removed = layer.queries_per_kv, set(lp.heads_removed)
    kept = {g: sum(h not in removed for h in range(g * qpk, (g + 1) * qpk)) for g in range(layer.num_kv_heads)}
    dropped = set(lp.kv_heads_removed)
    kept_counts = {kept[g] for g in kept if g not in dropped}
    if any(kept[g] for g in dropped) or len(kept_counts) > 1 or 0 in kept_counts:
        raise ConfigError(f"{what}, heads_removed", sorted(removed), "the query heads of removed KV groups plus the "
                          "same number of heads from every kept KV group (GQA stays uniform)",
                          hint="the plan file was edited or belongs to another model")


def _rows(heads: list[int], head_dim: int) -> list[int]:
    return [h * head_dim + j for h in heads for j in range(head_dim)]


def _remove_rows(parts: list[tuple["nn.Linear | FusedRows", list[int]]]) -> None:
    """Remove output rows (indices local to each projection); rows of one fused module go in one call."""
    import torch_pruning as tp

    by_module: dict[nn.Linear, list[int]] = {}
    for proj, rows in parts:
        module, block = output_site(proj)
        offset = block.start or 0
        by_module.setdefault(module, []).extend(offset + r for r in rows)
    for module, rows in by_module.items():
        if rows:
            tp.prune_linear_out_channels(module, sorted(rows))


@torch.no_grad()
def _prune_attention(layer: LayerStructure, lp: LayerPlan) -> None:
    import torch_pruning as tp

    q_rows = _rows(lp.heads_removed, layer.head_dim)
    kv_rows = _rows(lp.kv_heads_removed, layer.head_dim)
    _remove_rows([(layer.q, q_rows), (layer.k, kv_rows), (layer.v, kv_rows)])
    if q_rows:
        tp.prune_linear_in_channels(layer.o, q_rows)
    attn = layer.attention
    attn.num_key_value_groups = lp.num_heads // lp.num_kv_heads if lp.num_kv_heads else 1  # 1: no KV head to repeat
    for name, value in (("num_heads", lp.num_heads), ("num_key_value_heads", lp.num_kv_heads)):
        if hasattr(attn, name):
            setattr(attn, name, value)


@torch.no_grad()
def _prune_mlp_rows(layer: LayerStructure, channels: list[int]) -> None:
    """gate/up rows (separate, or blocks of one fused projection) and down columns, by torch-pruning's low-level
    functions."""
    import torch_pruning as tp

    _remove_rows([(layer.gate, channels), (layer.up, channels)])
    tp.prune_linear_in_channels(layer.down, channels)


def _rewrite_config(model: nn.Module, plan: PruningPlan) -> None:
    config = getattr(model.config, "text_config", None) or model.config
    config.head_dim = plan.head_dim
    first = plan.layers[0]
    # transformers validates hidden_size % num_attention_heads; otherwise keep the original dims and reload
    # through load_pruned, which replays the plan (also when biases were added: the families' configs cannot
    # ask for o_proj/down_proj biases alone, and plain from_pretrained must then fail on shapes, not drop them)
    # families whose attention reads the shared config (apply_plan allows them same-shaped plans only) always need it
    # (a plan with a block removed whole is never uniform: its zero widths are replayed by load_pruned)
    shared = not get_architecture(model).per_layer_heads
    if shared or (plan.is_uniform and plan.hidden_size % max(first.num_heads, 1) == 0):
        config.num_attention_heads = first.num_heads
        config.num_key_value_heads = first.num_kv_heads
        config.intermediate_size = first.intermediate_size


@torch.no_grad()
def apply_plan(model: nn.Module, plan: PruningPlan, *, trace: bool = True, refit: LeastSquares | None = None,
               weights_follow: bool = False) -> nn.Module:
    """Physically remove the plan's groups from ``model`` in place and rewrite its config; returns ``model``.

    With ``trace`` (default) torch-pruning traces the model first and the MLP channels are removed as its
    dependency group, after checking that gate/up/down are coupled as the architecture table says (a user's
    modified model is caught). ``trace=False`` removes the same rows/columns with torch-pruning's low-level
    functions without running the model: for a model freshly built from a registered family's config, also
    with its parameters on the meta device (how :func:`~adapruner_lightning.outputs.export.load_pruned` replays).

    A plan with the least-squares reconstruction (:attr:`PruningPlan.refits_weights`) also changes the kept
    columns of o_proj/down_proj, which the plan does not hold: ``refit`` (the
    :class:`~adapruner_lightning.core.reconstruction.LeastSquares` of the calibration pool the plan was made on)
    re-fits them layer by layer right before that layer's columns go, or ``weights_follow=True`` says that the
    caller loads the pruned weights next (an export, a checkpoint). Without either such a plan is refused.
    """
    spec = get_architecture(model)
    layers = check_plan_fits(model, plan)
    if not spec.per_layer_heads and not plan.same_shapes:
        raise ConfigError("pruning plan", "layers of different shapes", f"identical layer shapes for {spec.name} (its "
                          "attention reads the shared config)", hint="prune with per_layer='uniform'")
    if not spec.per_layer_heads and plan.removes_blocks:
        raise ConfigError("pruning plan", f"whole attention or MLP blocks removed from {spec.name}", "a plan that "
                          "keeps every block", hint="its attention reads the shared config, so it needs per-layer "
                          "head counts it does not have; allocate without block_removal")
    refit = _check_refit(plan, refit, weights_follow)
    traced = trace and any(lp.channels_removed for lp in plan.layers) and not layers[0].fused
    graph = build_dependency_graph(model) if traced else None
    for layer, lp in zip(layers, plan.layers):
        if refit is not None:
            write_fits(layer, refit.layer_fits(layer, LayerSelection(list(lp.heads_removed), list(lp.kv_heads_removed),
                                                                     list(lp.channels_removed))))
        if lp.channels_removed and not traced:
            _prune_mlp_rows(layer, list(lp.channels_removed))
        elif lp.channels_removed:
            check_mlp_coupling(graph, layer)
            mlp_group(graph, layer, list(lp.channels_removed)).prune()
        _prune_attention(layer, lp)
        for module, values in ((layer.o, lp.o_bias), (layer.down, lp.down_bias)):
            if values is not None:
                add_bias(module, values, trainable=module.weight.requires_grad)
    _rewrite_config(model, plan)
    return model


def _check_refit(plan: PruningPlan, refit: LeastSquares | None, weights_follow: bool) -> LeastSquares | None:
    """The re-fit to write while applying ``plan`` (None: none needed, or the weights follow); a plan that needs
    one and gets neither is refused before anything is changed."""
    if not plan.refits_weights or weights_follow:
        return None
    if refit is None:
        raise ConfigError("pruning plan", "reconstruction='lstsq' (re-fitted o_proj/down_proj columns)",
                          "the calibration pool's least-squares statistics to fit them again, or the pruned weights",
                          hint="load the pruned export with load_pruned, resume from the checkpoint, or replay the "
                               "plan with the calibration data it was made on (the callback re-fits from its "
                               "datamodule's pruning_data); a plan made with reconstruction='bias' needs no data")
    return refit


def is_applied(model: nn.Module, plan: PruningPlan) -> bool:
    """Whether ``model`` already has the shapes ``plan`` produces (then replaying it again must be skipped)."""
    layers = layer_structures(model)
    return len(layers) == len(plan.layers) and all(
        (layer.num_heads, layer.num_kv_heads, layer.intermediate) == (lp.num_heads, lp.num_kv_heads, lp.intermediate_size)
        for layer, lp in zip(layers, plan.layers))
