"""Whole blocks removed: a layer without attention (0 heads, 0 KV heads) and/or without MLP (0 channels).

Selection counts, plans (JSON, provenance, old files), physical pruning on tiny models of every per-layer family:
the pruned model's forward and KV-cache generation equal the masked scoring of the same selection."""

from __future__ import annotations

import copy

import pytest
import torch

from adapruner_lightning.core.groups import layer_structures, total_params
from adapruner_lightning.core.masking import masked
from adapruner_lightning.core.physical import apply_plan, make_plan
from adapruner_lightning.core.plan import PruningPlan
from adapruner_lightning.core.selection import LayerCounts, LayerSelection, counts_cost, layer_counts, max_counts
from adapruner_lightning.errors import ConfigError
from conftest import make_tiny_model
from helpers_core import FAMILIES, SEQ, VOCAB, block_counts, block_selection, check_generation, logits, tiny, tokens

#: masked == physical logits in float32, absolute (the brief of the capability: 1e-5)
EXACT = 1e-5


def test_whole_block_counts_select_every_unit_and_cost_what_they_remove():
    layers = layer_structures(tiny("llama", layers=4))
    for unit in ("kv_group", "query_head"):
        counts = block_counts(layers, unit)
        selection = block_selection(tiny("llama", layers=4), unit)
        assert selection[0].heads == list(range(6)) and selection[0].kv_heads == [0, 1]  # KV heads go with the queries
        assert selection[1].channels == list(range(128)) and selection[0].removes_attention(layers[0])
        assert selection[1].removes_mlp(layers[1]) and not selection[0].removes_mlp(layers[0])
        assert not selection[2].removes_attention(layers[2]) and not selection[3].removes_attention(layers[3])
        removed = sum(sel.removed_params(layers[i]) for i, sel in selection.items())
        assert counts_cost(layers, counts, unit) == removed
        assert removed > layers[0].attention_params() + layers[1].attention_params() + layers[1].mlp_params()
        assert {i: layer_counts(layers[i], sel, unit) for i, sel in selection.items()} == counts
    partial = max_counts(layers[0], "kv_group", 8)
    assert partial == LayerCounts(1, 120)  # without whole blocks, one KV group and round_to channels stay


def _cases():
    return [(family, "kv_group") for family in FAMILIES] + [("llama", "query_head"), ("gemma3_text", "query_head")]


@pytest.mark.parametrize(("family", "unit"), _cases())
def test_whole_blocks_removed_run_and_equal_the_masked_scoring(family, unit):
    model = tiny(family, layers=4)
    selection = block_selection(model, unit)
    x = tokens(2, SEQ, seed=1)
    dense = logits(model, x)
    with masked(layer_structures(model), selection):
        scored = logits(model, x)
    assert not torch.allclose(dense, scored)
    plan = make_plan(model, selection)
    apply_plan(model, plan)  # traced: torch-pruning's dependency group removes every MLP channel of layer 1
    assert (logits(model, x) - scored).abs().max() <= EXACT
    assert total_params(model) == plan.params_after
    shapes = [(lp.num_heads, lp.num_kv_heads, lp.intermediate_size) for lp in plan.layers]
    assert shapes[0][:2] == (0, 0) and shapes[1] == (0, 0, 0) and 0 < shapes[2][0] < 6 and shapes[3] == (6, 2, 128)
    layers = layer_structures(model)
    assert [(s.num_heads, s.num_kv_heads, s.intermediate) for s in layers] == shapes
    assert layers[1].queries_per_kv == 0 and layers[1].attention_params() == 0  # o_proj: Linear(0, hidden)
    check_generation(model, x)


def test_the_plan_records_its_removed_blocks_and_old_plan_files_still_load(tmp_path):
    model = tiny("llama", layers=4)
    plan = make_plan(model, block_selection(model, "kv_group"), provenance={"metric": "x"})
    assert plan.removed_blocks == {"attention": [0, 1], "mlp": [1]}
    assert plan.provenance["removed_blocks"] == plan.removed_blocks and plan.version == 2
    assert not plan.is_uniform
    again = PruningPlan.load(plan.save(tmp_path / "plan.json"))
    assert again == plan and again.removed_blocks == plan.removed_blocks
    plain = make_plan(model, {2: LayerSelection(channels=[0, 1])})
    assert plain.removed_blocks == {"attention": [], "mlp": []} and plain.version == 1  # older readers read it
    assert "removed_blocks" not in plain.provenance
    old = {  # what main's code wrote before whole blocks existed: no removed_blocks, version 1
        "model_type": "llama", "num_layers": 4, "hidden_size": 96, "head_dim": 16, "original_num_heads": 6,
        "original_num_kv_heads": 2, "original_intermediate_size": 128, "params_before": total_params(model),
        "params_after": total_params(model) - 2 * layer_structures(model)[0].channel_cost(), "target_ratio": 0.0,
        "ratio_basis": "total", "provenance": {"metric": "magnitude_l2"}, "version": 1,
        "layers": [{"index": i, "heads_removed": [], "kv_heads_removed": [], "channels_removed": [0, 1] if i == 2
                    else [], "num_heads": 6, "num_kv_heads": 2, "intermediate_size": 126 if i == 2 else 128,
                    "o_bias": None, "down_bias": None} for i in range(4)]}
    loaded = PruningPlan.from_dict(old)
    assert loaded.removed_blocks == {"attention": [], "mlp": []} and not loaded.removes_blocks
    assert loaded.layers == plain.layers and loaded.version == 1
    apply_plan(model, loaded)
    assert total_params(model) == loaded.params_after


def test_a_family_whose_attention_reads_the_shared_config_refuses_whole_blocks_before_any_work():
    model = make_tiny_model("phi3", vocab_size=VOCAB, layers=2, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    layers = layer_structures(model)
    every = {i: LayerSelection(heads=list(range(6)), kv_heads=[0, 1]) for i in range(2)}
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=r"whole attention or MLP blocks removed from phi3.*per-layer head counts"):
        apply_plan(model, make_plan(model, every))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()) and len(layers) == 2


def test_a_layer_keeping_key_value_heads_without_query_heads_is_refused():
    model = tiny("llama")
    plan = make_plan(model, {0: LayerSelection(heads=list(range(6)))})
    with pytest.raises(ConfigError, match=r"layer 0, heads_removed.*same number of heads from every kept KV group"):
        apply_plan(model, plan)


@pytest.mark.parametrize("reconstruction", ["bias", "lstsq"])
def test_a_block_removed_whole_gets_no_reconstruction_and_scores_as_exported(reconstruction):
    """A removed block's mean output is not added back (llama.cpp's deci skips a removed block, biases included):
    only partly pruned projections are repaired, and the masked score equals the pruned model's logits."""
    from adapruner_lightning.core.config import PruningConfig
    from adapruner_lightning.core.session import PruningSession

    model = tiny("llama", layers=4)
    session = PruningSession(model, PruningConfig(metric="wanda_sp", reconstruction=reconstruction, num_samples=4),
                             tokens(), progress=False)
    candidate = session.default_candidate()
    selection = block_selection(model, "kv_group")
    compensation = session.compensation(candidate, selection)
    x = tokens(2, SEQ, seed=1)
    with masked(session.layers, selection, compensation):
        scored = logits(model, x)
    plan = session.plan(candidate, selection)
    repaired = {i: sorted(p) for i, p in (compensation.fits if reconstruction == "lstsq" else compensation).items()}
    assert repaired == {0: ["down"], 2: ["down", "o"]}  # layer 0's attention and layer 1 are gone whole
    assert plan.layers[0].o_bias is None and plan.layers[1].o_bias is None and plan.layers[1].down_bias is None
    assert plan.layers[2].o_bias is not None and plan.layers[0].down_bias is not None
    apply_plan(model, plan, refit=session.least_squares if reconstruction == "lstsq" else None)
    assert (logits(model, x) - scored).abs().max() <= EXACT
