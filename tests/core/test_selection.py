"""Group selection: budgets, scopes, constraints (keep layers, minimum widths, round_to) and their errors."""

from __future__ import annotations

import pytest
import torch

from adapruner_lightning.errors import ConfigError
from adapruner_lightning.core.groups import layer_structures, total_params
from adapruner_lightning.core.importance import UnitScores
from adapruner_lightning.api import prune
from adapruner_lightning.core.selection import SelectionOptions, pruned_layer_range, select_groups
from helpers_core import tiny


@pytest.fixture(scope="module")
def layers():
    """Structures of a 4-layer tiny Llama (6 heads / 2 KV heads, MLP 128)."""
    return layer_structures(tiny("llama", layers=4))


def _scores(layers, seed: int = 0) -> dict[int, UnitScores]:
    gen = torch.Generator().manual_seed(seed)
    return {i: UnitScores(heads=torch.rand(6, generator=gen), kv_groups=torch.rand(2, generator=gen),
                          channels=torch.rand(128, generator=gen)) for i in range(len(layers))}


def _removed(layers, selection) -> int:
    return sum(sel.removed_params(layers[i]) for i, sel in selection.items())


@pytest.mark.parametrize("scope", ["layerwise", "global"])
@pytest.mark.parametrize("unit", ["kv_group", "query_head"])
def test_budget_met_and_lowest_units_go(layers, scope, unit):
    scores = _scores(layers)
    budget = int(0.3 * sum(layer.attention_params() + layer.mlp_params() for layer in layers))
    selection = select_groups(layers, scores, SelectionOptions(budget=budget, scope=scope, attention_unit=unit,
                                                               attn_share=0.6))
    removed = _removed(layers, selection)
    assert budget - layers[0].channel_cost() < removed <= budget
    for i, sel in selection.items():
        channels = scores[i].channels
        if sel.channels:  # the removed channels are the lowest-scoring ones
            kept = sorted(set(range(128)) - set(sel.channels))
            assert channels[sel.channels].max() <= channels[kept].min()
        if unit == "kv_group":
            for g in sel.kv_heads:
                assert set(range(3 * g, 3 * g + 3)) <= set(sel.heads)
                assert scores[i].kv_groups[g] == scores[i].kv_groups.min()
        else:
            assert not sel.kv_heads
            per_group = [sum(h // 3 == g for h in sel.heads) for g in range(2)]
            assert per_group[0] == per_group[1]
    assert any(sel.heads for sel in selection.values())


@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_budget_never_overshot(layers, scope):
    """Attention comes in big units; rounding a layer's share up must not overshoot the whole budget."""
    unit = layers[0].unit_cost("kv_group")
    for share in (None, 0.0, 0.6, 0.9):
        for units_per_layer in (0.3, 0.55, 0.7, 0.9, 1.2):
            budget = int(units_per_layer * unit * len(layers) / (share or 0.5))
            opts = SelectionOptions(budget=budget, scope=scope, attn_share=share)
            removed = _removed(layers, select_groups(layers, _scores(layers), opts))
            assert budget - 2 * layers[0].channel_cost() < removed <= budget, (share, units_per_layer)


def test_every_layer_keeps_a_minimum(layers):
    capacity = sum((layer.num_kv_heads - 1) * layer.unit_cost("kv_group") + (layer.intermediate - 8)
                   * layer.channel_cost() for layer in layers)
    for scope in ("layerwise", "global"):
        selection = select_groups(layers, _scores(layers), SelectionOptions(budget=capacity, scope=scope, round_to=8))
        for i, sel in selection.items():
            assert len(sel.kv_heads) == 1 and len(sel.channels) == 120, (scope, i)
    with pytest.raises(ConfigError, match=r"target_ratio=.*at most \d+ removable parameters"):
        select_groups(layers, _scores(layers), SelectionOptions(budget=capacity + 1, round_to=8))


def test_keep_layers_and_ramp(layers):
    budget = 60_000
    selection = select_groups(layers, _scores(layers), SelectionOptions(budget=budget, keep_first=1, keep_last=1,
                                                                        layer_ramp=1.0, prune_attention=False))
    assert not selection[0].channels and not selection[3].channels
    assert not any(sel.heads for sel in selection.values())
    assert len(selection[2].channels) > len(selection[1].channels)  # ramp > 0 prunes later layers more
    selection = select_groups(layers, _scores(layers), SelectionOptions(budget=budget, scope="global", keep_first=1,
                                                                        keep_last=1, attn_share=0.0))
    assert not selection[0].channels and not selection[3].channels and not any(s.heads for s in selection.values())


def test_uniform_gives_identical_shapes(layers):
    selection = select_groups(layers, _scores(layers), SelectionOptions(budget=70_000, uniform=True, round_to=4))
    shapes = {(len(s.heads), len(s.kv_heads), len(s.channels)) for s in selection.values()}
    assert len(shapes) == 1 and next(iter(shapes))[2] % 4 == 0


def test_pruned_layer_range_errors():
    assert list(pruned_layer_range(6, 4, 1)) == [4]
    with pytest.raises(ConfigError, match=r"keep_first/keep_last=\(3, 1\).*of the 4 layers"):
        pruned_layer_range(4, 3, 1)
    with pytest.raises(ConfigError, match="non-negative"):
        pruned_layer_range(4, -1, 0)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.2])
def test_ratio_out_of_range(ratio):
    with pytest.raises(ConfigError, match=rf"target_ratio={ratio!r} is invalid: expected a fraction in \(0, 1\)"):
        prune(tiny("llama"), target_ratio=ratio, metric="magnitude_l2", progress=False)


def test_unreachable_ratio_with_constraints():
    model = tiny("llama", layers=4)
    before = total_params(model)
    with pytest.raises(ConfigError, match=r"keep_first/keep_last=\(3, 1\).*leaving at least one of the 4 layers"):
        prune(model, target_ratio=0.2, metric="magnitude_l2", keep_first=3, keep_last=1, progress=False)
    with pytest.raises(ConfigError, match=r"can remove [\d,]+ removable parameters \(layers 2-2 .*Fix: .*lower "
                                          r"target_ratio to at most 0\.\d+, keep fewer layers whole"):
        prune(model, target_ratio=0.4, metric="magnitude_l2", keep_first=2, keep_last=1, progress=False)
    assert total_params(model) == before  # nothing was touched


def test_a_selection_short_of_its_budget_is_infeasible():
    """attn_share=0 with a target the MLP alone cannot reach: refused, not scored as if it met the budget."""
    from adapruner_lightning.core.config import PruningConfig
    from adapruner_lightning.core.session import Candidate, PruningSession

    model = tiny("llama", layers=4)
    session = PruningSession(model, PruningConfig(target_ratio=0.7, ratio_basis="prunable", metric="magnitude_l2"),
                             torch.zeros(1, 2, dtype=torch.long), progress=False)
    short = Candidate("magnitude_l2", "sum", [0], attn_share=0.0)
    with pytest.raises(ConfigError, match="budget"):
        session.select(short)
    full = session.select(Candidate("magnitude_l2", "sum", [0]))
    removed = sum(sel.removed_params(session.layers[i]) for i, sel in full.items())
    assert removed >= 0.99 * session.budget
