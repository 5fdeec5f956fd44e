"""Choosing which coupled groups to remove so that a parameter budget is met.

Two scopes:

* ``layerwise`` (LLM-Pruner's default): every pruned layer loses the same share (scaled by an optional
  per-layer ramp), attention rounded to whole units; within a layer, the lowest-scoring units go.
* ``global``: units of all pruned layers ranked together by importance per parameter, normalised per type
  (attention vs MLP, each divided by its median) so that the two kinds compare.
* ``standardized`` (FLAP's adaptive structure, ``AL-AM`` in its reference code): units scored by the mean
  per-layer z-score of their channels (:func:`~adapruner_lightning.core.importance.standardized_unit_scores`),
  all ranked together, and the lowest removed while they fit in the budget (one global threshold, units
  weighted by their parameter cost, as the reference's ``compression_weight``).

In both, attention is rounded to feasible units and the remainder comes from MLP channels (fine-grained),
so the budget is met within one MLP block. Every layer keeps at least one KV group / one query head per
group and ``round_to`` MLP channels.

Whole blocks: per-layer counts (:class:`LayerCounts`, the allocation stage's) may take a layer's attention to zero
(every query head and KV head) or its MLP to zero channels (:func:`max_counts` with ``whole_blocks``);
:func:`select_counts` then removes every unit of the block, and :func:`counts_cost` counts what that removes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from adapruner_lightning.core.groups import LayerStructure
from adapruner_lightning.core.importance import UnitScores
from adapruner_lightning.errors import ConfigError


@dataclass
class SelectionOptions:
    """What :func:`select_groups` needs besides the scores (see :class:`~adapruner_lightning.core.config.PruningConfig`)."""

    budget: int
    scope: str = "layerwise"
    attention_unit: str = "kv_group"
    keep_first: int = 0
    keep_last: int = 0
    attn_share: float | None = None
    layer_ramp: float = 0.0
    round_to: int = 1
    prune_attention: bool = True
    uniform: bool = False  # every pruned layer loses exactly as many units and channels


@dataclass
class LayerSelection:
    """Groups removed from one layer."""

    heads: list[int] = field(default_factory=list)  # query heads removed (kv_group removals included)
    kv_heads: list[int] = field(default_factory=list)  # key/value heads removed
    channels: list[int] = field(default_factory=list)  # MLP channels removed

    def removed_params(self, layer: LayerStructure) -> int:
        """Parameters this selection removes from ``layer``."""
        return (len(self.heads) * layer.head_cost() + len(self.kv_heads) * layer.kv_cost()
                + len(self.channels) * layer.channel_cost())

    def removes_attention(self, layer: LayerStructure) -> bool:
        """Whether ``layer`` loses its whole attention (every query head; its KV heads go with them)."""
        return layer.num_heads > 0 and len(self.heads) == layer.num_heads

    def removes_mlp(self, layer: LayerStructure) -> bool:
        """Whether ``layer`` loses its whole MLP (every channel)."""
        return layer.intermediate > 0 and len(self.channels) == layer.intermediate

    def removes_block_of(self, layer: LayerStructure, member: str) -> bool:
        """Whether the block whose output projection is ``member`` (``"o"``: attention, ``"down"``: MLP) goes whole:
        then no reconstruction adds anything back (llama.cpp's ``deci`` skips a removed block, biases included)."""
        return self.removes_attention(layer) if member == "o" else self.removes_mlp(layer)


@dataclass
class _Unit:
    layer: int
    kind: str  # "attn" or "mlp"
    score: float
    cost: int
    heads: list[int]
    kv_heads: list[int]
    channels: list[int]
    width: int = 1  # how many unit scores ``score`` sums (a mean is score / width)


def pruned_layer_range(num_layers: int, keep_first: int, keep_last: int) -> range:
    """Indices of the layers that may lose structures, or a ConfigError if none would."""
    if keep_first < 0 or keep_last < 0 or keep_first + keep_last >= num_layers:
        raise ConfigError("keep_first/keep_last", (keep_first, keep_last),
                          f"non-negative counts leaving at least one of the {num_layers} layers to prune")
    return range(keep_first, num_layers - keep_last)


def removable_params(layers: list[LayerStructure], indices: range | list[int], *, attention_unit: str,
                     round_to: int, prune_attention: bool = True) -> int:
    """The most parameters any selection can remove from the layers ``indices``: each keeps one KV group (or one
    query head per group) and ``round_to`` MLP channels, whatever the scores (the units of
    :func:`_attention_units` and :func:`_mlp_units`, counted without scoring them)."""
    total = 0
    for i in indices:
        layer = layers[i]
        if prune_attention:
            units = layer.num_kv_heads - 1 if attention_unit == "kv_group" else layer.queries_per_kv - 1
            total += units * layer.unit_cost(attention_unit)
        if layer.intermediate > round_to:
            total += (layer.intermediate - round_to) * layer.channel_cost()
    return total


def _attention_units(layer: LayerStructure, scores: UnitScores, unit: str) -> list[_Unit]:
    """Removable attention units of a layer, lowest score first, at most all but one."""
    if unit == "kv_group":
        order = torch.argsort(scores.kv_groups, stable=True).tolist()[: layer.num_kv_heads - 1]
        qpk = layer.queries_per_kv
        return [_Unit(layer.index, "attn", float(scores.kv_groups[g]), layer.unit_cost(unit),
                      list(range(g * qpk, (g + 1) * qpk)), [g], []) for g in order]
    qpk, kv = layer.queries_per_kv, layer.num_kv_heads
    per_group = scores.heads.view(kv, qpk)
    ranks = torch.argsort(per_group, dim=1, stable=True)  # [kv, qpk] lowest first
    units = []
    for j in range(qpk - 1):
        heads = [g * qpk + int(ranks[g, j]) for g in range(kv)]
        units.append(_Unit(layer.index, "attn", float(scores.heads[heads].sum()), layer.unit_cost(unit), heads, [], [],
                           width=len(heads)))
    return units


def _mlp_units(layer: LayerStructure, scores: UnitScores, round_to: int) -> list[_Unit]:
    """Removable MLP blocks of ``round_to`` channels, lowest score first, keeping at least ``round_to``.

    A width that is not a multiple of ``round_to`` first loses its remainder (the lowest channels, one smaller
    block), so every width that results is a multiple of ``round_to``.
    """
    if layer.intermediate <= round_to:
        return []
    order_t = torch.argsort(scores.channels, stable=True)
    rem = layer.intermediate % round_to
    sizes = ([rem] if rem else []) + [round_to] * ((layer.intermediate - rem) // round_to - 1)
    sizes_t = torch.tensor(sizes)
    ends = sizes_t.cumsum(0)
    csum = torch.cat([torch.zeros(1, dtype=torch.float64), scores.channels[order_t].double().cumsum(0)])
    block_scores = (csum[ends] - csum[ends - sizes_t]).tolist()  # one sum per block, no per-channel ops
    order, cost, units, start = order_t.tolist(), layer.channel_cost(), [], 0
    for size, score in zip(sizes, block_scores):
        units.append(_Unit(layer.index, "mlp", score, cost * size, [], [], order[start:start + size], width=size))
        start += size
    return units


def _layer_weights(indices: list[int], ramp: float) -> dict[int, float]:
    if len(indices) == 1:
        return {indices[0]: 1.0}
    z = torch.linspace(-1, 1, len(indices))
    return {i: math.exp(ramp * float(zi)) for i, zi in zip(indices, z)}


def select_groups(layers: list[LayerStructure], scores: dict[int, UnitScores], opts: SelectionOptions) -> dict[int, LayerSelection]:
    """Pick the groups to remove from ``layers`` (scores given for the pruned layers) to meet ``opts.budget``."""
    indices = list(pruned_layer_range(len(layers), opts.keep_first, opts.keep_last))
    attn = {i: _attention_units(layers[i], scores[i], opts.attention_unit) if opts.prune_attention else [] for i in indices}
    mlp = {i: _mlp_units(layers[i], scores[i], opts.round_to) for i in indices}
    capacity = removable_params(layers, indices, attention_unit=opts.attention_unit, round_to=opts.round_to,
                                prune_attention=opts.prune_attention)
    if opts.budget > capacity:
        raise ConfigError("target_ratio", f"{opts.budget} parameters", f"at most {capacity} removable parameters with "
                          f"these constraints", hint="lower target_ratio, keep fewer layers whole, or lower round_to")
    weights = _layer_weights(indices, opts.layer_ramp)
    if opts.scope == "global":
        chosen = _select_global(attn, mlp, weights, opts)
    elif opts.scope == "standardized":
        chosen = _select_standardized(attn, mlp, opts)
    else:
        chosen = _select_layerwise(layers, attn, mlp, weights, opts)
    out = {i: LayerSelection() for i in range(len(layers))}
    for unit in chosen:
        sel = out[unit.layer]
        sel.heads += unit.heads
        sel.kv_heads += unit.kv_heads
        sel.channels += unit.channels
    for sel in out.values():
        sel.heads.sort(), sel.kv_heads.sort(), sel.channels.sort()
    _check_budget(layers, out, mlp, opts)
    return out


def _check_budget(layers: list[LayerStructure], selection: dict[int, LayerSelection], mlp: dict[int, list[_Unit]],
                  opts: SelectionOptions) -> None:
    """Raise unless ``selection`` removes the budget up to the granularity of one MLP block (of every layer at once
    when uniform): a candidate whose constraints (attn_share, layers kept whole) leave too little is infeasible,
    not scored as if it met the target."""
    removed = sum(sel.removed_params(layers[i]) for i, sel in selection.items())
    block = max((u.cost for units in mlp.values() for u in units), default=0)  # a round_to block (not a remainder)
    slack = block * (len(mlp) if opts.uniform else 1)
    if opts.budget - removed > slack:
        raise ConfigError("selection", f"{removed:,} of a budget of {opts.budget:,} parameters",
                          f"the budget within one MLP block ({slack:,} parameters)",
                          hint="this candidate's attn_share / layers kept whole leave too little to remove; "
                               "raise attn_share, keep fewer layers whole or lower target_ratio")


def _take(units: list[_Unit], budget: float) -> tuple[list[_Unit], int]:
    """Take units in order while they fit in ``budget``; return them and what they cost."""
    taken, spent = [], 0
    for unit in units:
        if spent + unit.cost > budget:
            continue
        taken.append(unit)
        spent += unit.cost
    return taken, spent


def _split_budget(attn: dict[int, list[_Unit]], mlp: dict[int, list[_Unit]], layers: list[LayerStructure] | None,
                  opts: SelectionOptions) -> float:
    if opts.attn_share is not None:
        return opts.attn_share * opts.budget
    if layers is None:
        return -1.0
    a = sum(layers[i].attention_params() for i in attn)
    m = sum(layers[i].mlp_params() for i in mlp)
    return opts.budget * a / (a + m) if opts.prune_attention else 0.0


def _select_layerwise(layers, attn, mlp, weights, opts) -> list[_Unit]:
    attn_budget = _split_budget(attn, mlp, layers, opts)
    norm = sum(weights[i] * layers[i].attention_params() for i in attn)
    chosen, spent = [], 0
    for i, units in attn.items():
        if not units:
            continue
        target = attn_budget * weights[i] * layers[i].attention_params() / norm
        affordable = int((opts.budget - spent) // units[0].cost)  # rounding up must not overshoot the budget
        n = max(0, min(len(units), int(round(target / units[0].cost)), affordable))
        chosen += units[:n]
        spent += sum(u.cost for u in units[:n])
    if opts.uniform:
        return chosen + _fill_mlp_uniform(mlp, opts.budget - spent)
    return chosen + _fill_mlp_layerwise(layers, mlp, weights, opts.budget - spent)


def _fill_mlp_uniform(mlp, budget: float) -> list[_Unit]:
    """The same number of MLP blocks from every layer (identical shapes), as close to ``budget`` as possible."""
    first = next(iter(mlp.values()))
    if not first:
        return []
    spent = [0]
    for unit in first:
        spent.append(spent[-1] + unit.cost * len(mlp))
    n = min(range(len(spent)), key=lambda k: abs(spent[k] - budget))
    return [u for units in mlp.values() for u in units[:n]]


def _fits(units: list[_Unit], start: int, budget: float) -> tuple[int, int]:
    """How many of ``units[start:]``, taken in order, fit in ``budget``, and what they cost."""
    n = spent = 0
    for unit in units[start:]:
        if spent + unit.cost > budget:
            break
        n, spent = n + 1, spent + unit.cost
    return n, spent


def _fill_mlp_layerwise(layers, mlp, weights, budget: float) -> list[_Unit]:
    """Spread ``budget`` over the layers' MLP blocks in proportion to weight x MLP size (water-filling)."""
    counts = {i: 0 for i in mlp}
    remaining = budget
    active = {i for i in mlp if mlp[i]}
    while active and remaining >= min(mlp[i][counts[i]].cost for i in active):
        norm = sum(weights[i] * layers[i].mlp_params() for i in active)
        grant = {i: remaining * weights[i] * layers[i].mlp_params() / norm for i in active}
        progressed = False
        for i in sorted(active):
            extra, cost = _fits(mlp[i], counts[i], grant[i])
            counts[i] += extra
            remaining -= cost
            progressed |= extra > 0
            if counts[i] == len(mlp[i]):
                active.discard(i)
        if not progressed:  # grants below one block each: hand out single blocks by largest share
            for i in sorted(active, key=lambda i: -grant[i]):
                if counts[i] < len(mlp[i]) and remaining >= mlp[i][counts[i]].cost:
                    counts[i] += 1
                    remaining -= mlp[i][counts[i] - 1].cost
            break
    return [u for i, n in counts.items() for u in mlp[i][:n]]


def _normalised(units: list[_Unit], weights: dict[int, float]) -> list[tuple[float, _Unit]]:
    if not units:
        return []
    per_param = torch.tensor([u.score / u.cost for u in units], dtype=torch.float64)
    scale = float(per_param.median()) or 1.0
    return [(float(p) / scale / weights[u.layer], u) for p, u in zip(per_param, units)]


def _select_global(attn, mlp, weights, opts) -> list[_Unit]:
    attn_units = [u for units in attn.values() for u in units]
    mlp_units = [u for units in mlp.values() for u in units]
    if opts.attn_share is not None:
        a_taken, spent = _take([u for _, u in sorted(_normalised(attn_units, weights), key=lambda t: t[0])],
                               opts.attn_share * opts.budget)
        m_taken, _ = _take([u for _, u in sorted(_normalised(mlp_units, weights), key=lambda t: t[0])],
                           opts.budget - spent)
        return a_taken + m_taken
    ranked = sorted(_normalised(attn_units, weights) + _normalised(mlp_units, weights), key=lambda t: t[0])
    taken, _ = _take([u for _, u in ranked], opts.budget)
    return taken


def _lowest_first(units: list[_Unit], budget: float) -> list[_Unit]:
    """Units by mean score, lowest first, taken while they fit in ``budget`` (see :func:`_select_standardized`)."""
    return _take(sorted(units, key=lambda u: u.score / u.width), budget)[0]


def _select_standardized(attn: dict[int, list[_Unit]], mlp: dict[int, list[_Unit]], opts: SelectionOptions) -> list[_Unit]:
    """FLAP's one global threshold over standardised unit scores, every unit weighted by its parameter cost.

    FLAP's reference stops at the threshold whose cumulative cost is closest to the target, which can miss it by
    half an attention head; here a unit that would overshoot the budget is skipped and the next-lowest that fit
    are taken, so that every method is compared at the same parameter count (within one MLP block).
    ``attn_share``: attention takes its share first, MLP the rest.
    """
    attn_units = [u for units in attn.values() for u in units]
    mlp_units = [u for units in mlp.values() for u in units]
    if opts.attn_share is None:
        return _lowest_first(attn_units + mlp_units, opts.budget)
    taken = _lowest_first(attn_units, opts.attn_share * opts.budget)
    return taken + _lowest_first(mlp_units, opts.budget - sum(u.cost for u in taken))


# ------------------------------------------------------------------------------ per-layer counts (allocation)

@dataclass(frozen=True)
class LayerCounts:
    """How much one layer loses: attention units (of the session's unit) and MLP channels."""

    attention: int = 0
    channels: int = 0


def layer_counts(layer: LayerStructure, sel: LayerSelection, attention_unit: str) -> LayerCounts:
    """``sel`` as counts: KV groups removed (``kv_group``) or query heads removed per KV group (``query_head``)."""
    units = len(sel.kv_heads) if attention_unit == "kv_group" else len(sel.heads) // max(layer.num_kv_heads, 1)
    return LayerCounts(units, len(sel.channels))


def attention_units(layer: LayerStructure, attention_unit: str) -> int:
    """How many attention units of kind ``attention_unit`` ``layer`` holds: KV groups (``kv_group``) or query heads
    per KV group (``query_head``); removing them all removes the layer's attention."""
    return layer.num_kv_heads if attention_unit == "kv_group" else layer.queries_per_kv


def max_counts(layer: LayerStructure, attention_unit: str, round_to: int, *, whole_blocks: bool = False) -> LayerCounts:
    """The most a layer may lose: all but one attention unit and all but ``round_to`` MLP channels, or with
    ``whole_blocks`` its whole attention and its whole MLP."""
    if whole_blocks:
        return LayerCounts(attention_units(layer, attention_unit), layer.intermediate)
    attention = attention_units(layer, attention_unit) - 1
    return LayerCounts(max(attention, 0), max(layer.intermediate - round_to, 0))


def attention_cost(layer: LayerStructure, units: int, attention_unit: str) -> int:
    """Parameters ``units`` attention units remove from ``layer``; all of them remove its KV heads too."""
    cost = units * layer.unit_cost(attention_unit)
    if attention_unit == "query_head" and units and units == attention_units(layer, attention_unit):
        cost += layer.num_kv_heads * layer.kv_cost()  # no query head is left to read them
    return cost


def counts_cost(layers: list[LayerStructure], counts: dict[int, LayerCounts], attention_unit: str) -> int:
    """Parameters ``counts`` remove."""
    return sum(attention_cost(layers[i], c.attention, attention_unit) + c.channels * layers[i].channel_cost()
               for i, c in counts.items())


def select_counts(layers: list[LayerStructure], scores: dict[int, UnitScores], counts: dict[int, LayerCounts],
                  attention_unit: str) -> dict[int, LayerSelection]:
    """The groups that ``counts`` remove: in each layer, its lowest-scoring attention units and MLP channels (a
    whole attention block: every query head and KV head)."""
    out = {i: LayerSelection() for i in range(len(layers))}
    for i, c in counts.items():
        if c.attention and c.attention == attention_units(layers[i], attention_unit):
            out[i].heads = list(range(layers[i].num_heads))
            out[i].kv_heads = list(range(layers[i].num_kv_heads))
        elif c.attention:
            for unit in _attention_units(layers[i], scores[i], attention_unit)[:c.attention]:
                out[i].heads += unit.heads
                out[i].kv_heads += unit.kv_heads
        if c.channels:
            out[i].channels = torch.argsort(scores[i].channels, stable=True)[:c.channels].tolist()
        for part in (out[i].heads, out[i].kv_heads, out[i].channels):
            part.sort()
    return out
