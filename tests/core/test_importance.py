"""Importance metrics, reducers and the statistics passes (exact recombination, hooks, memory)."""

from __future__ import annotations

import pytest
import torch

from adapruner_lightning.core import importance
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.core.groups import layer_structures
from adapruner_lightning.core.importance import (ScoreInputs, get_metric, metric_names, reduce_members, register_metric,
                                                 score_members, unit_scores)
from adapruner_lightning.core.reconstruction import collect_grams
from adapruner_lightning.core.stats import StatsCache, collect_activation_stats, collect_gradient_scores
from conftest import make_tiny_model
from helpers_core import tiny, tokens

PLANTED_LAYER, PLANTED_CHANNEL, PLANTED_GROUP = 1, 37, 1
HD = 16


def _all_scores(model, layers, pool, metric: str, reducer: str = "sum", cache: StatsCache | None = None):
    spec = get_metric(metric)
    act = (cache or collect_activation_stats(model, layers, pool, progress=False)).reduce(list(range(pool.shape[0]))) \
        if spec.needs == "activations" else None
    grads = collect_gradient_scores(model, layers, pool, [spec]) if spec.needs == "gradients" else None
    grams = collect_grams(model, layers, pool) if spec.needs == "grams" else None
    out = []
    for i, layer in enumerate(layers):
        inputs = ScoreInputs(layer, activation_stats=act[i] if act else {}, gradient_stats=grads[i][metric] if grads else {},
                             generator=torch.Generator().manual_seed(i), grams=grams.layers[i] if grams else {},
                             gram_tokens=grams.tokens if grams else 0)
        out.append(unit_scores(layer, spec.fn(inputs), reducer))
    return out


@pytest.fixture(scope="module", params=["qwen2", "phi3"])
def planted(request):
    """A tiny Qwen2 (q/k/v biases) or Phi-3 (fused qkv/gate_up) with 3 KV groups where one MLP channel and one KV
    group are all zeros."""
    if request.param == "phi3":
        model = make_tiny_model("phi3", vocab_size=256, layers=2, num_key_value_heads=3, pad_token_id=0,
                                eos_token_id=1, bos_token_id=2)
    else:
        model = tiny("qwen2", num_key_value_heads=3)
    layers = layer_structures(model)
    layer = layers[PLANTED_LAYER]
    qpk = layer.queries_per_kv
    heads = range(PLANTED_GROUP * qpk, (PLANTED_GROUP + 1) * qpk)
    q_rows = torch.cat([torch.arange(h * HD, (h + 1) * HD) for h in heads])
    kv_rows = torch.arange(PLANTED_GROUP * HD, (PLANTED_GROUP + 1) * HD)
    with torch.no_grad():
        layer.gate.weight[PLANTED_CHANNEL] = 0
        layer.up.weight[PLANTED_CHANNEL] = 0
        layer.down.weight[:, PLANTED_CHANNEL] = 0
        for proj, rows in ((layer.q, q_rows), (layer.k, kv_rows), (layer.v, kv_rows)):
            proj.weight[rows] = 0
            if proj.bias is not None:
                proj.bias[rows] = 0
        layer.o.weight[:, q_rows] = 0
    pool = tokens(4, 16)
    return model, layers, pool, collect_activation_stats(model, layers, pool, progress=False)


@pytest.mark.parametrize("metric", [m for m in metric_names() if m != "random"])
def test_metric_scores_planted_useless_group_lowest(planted, metric):
    model, layers, pool, cache = planted
    reducers = ("sum", "max", "prod", "first") if get_metric(metric).needs != "gradients" else ("sum",)
    for reducer in reducers:
        scores = _all_scores(model, layers, pool, metric, reducer, cache)[PLANTED_LAYER]
        for name, values, planted_index in (("channel", scores.channels, PLANTED_CHANNEL),
                                            ("kv group", scores.kv_groups, PLANTED_GROUP)):
            assert torch.isfinite(values).all()
            assert values[planted_index] <= values.min(), f"{metric}/{reducer}: planted {name} is not lowest"
            assert values.max() > values[planted_index], f"{metric}/{reducer}: every {name} scored alike"
        heads = scores.heads.view(3, 2)
        assert (heads[PLANTED_GROUP] <= scores.heads.min()).all()


def test_random_metric_is_seeded():
    model = tiny("llama")
    layers = layer_structures(model)
    a = _all_scores(model, layers, None, "random")
    b = _all_scores(model, layers, None, "random")
    assert all(torch.equal(x.channels, y.channels) and torch.equal(x.heads, y.heads) for x, y in zip(a, b))
    assert not torch.equal(a[0].channels, a[1].channels)


def test_reducers_behave_as_named():
    parts = [torch.tensor([1.0, 2.0, 3.0]), None, torch.tensor([4.0, 0.0, 1.0]), torch.tensor([2.0, 2.0, 2.0])]
    expected = {"sum": [7, 4, 6], "mean": [7 / 3, 4 / 3, 2], "max": [4, 2, 3], "prod": [8, 0, 6], "first": [1, 2, 3]}
    for name, want in expected.items():
        assert torch.allclose(reduce_members(parts, name), torch.tensor(want, dtype=torch.float32)), name
    with pytest.raises(ConfigError, match=r"reducer='median'.*\['first', 'max', 'mean', 'prod', 'sum'\]"):
        reduce_members(parts, "median")


def test_unit_scores_group_members():
    layer = layer_structures(tiny("llama"))[0]  # 6 heads over 2 KV heads, head_dim 16, MLP 128
    members = {m: torch.ones(getattr(layer, m).out_features if m in importance.ROW_MEMBERS
                             else getattr(layer, m).in_features) for m in importance.MEMBERS}
    members["down"] = None  # an absent member is skipped
    s = unit_scores(layer, members, "sum")
    assert s.heads.tolist() == [32.0] * 6  # q rows + o columns of one head
    assert s.kv_groups.tolist() == [3 * 16 + 16 + 16 + 3 * 16] * 2
    assert s.channels.tolist() == [2.0] * 128
    s = unit_scores(layer, members, "first")
    assert s.kv_groups.tolist() == [48.0, 48.0] and s.heads.tolist() == [16.0] * 6


def test_metric_registry():
    with pytest.raises(ConfigError, match=r"metric='nope'.*'flap'.*'taylor_vector'"):
        get_metric("nope")
    with pytest.raises(ConfigError, match="metric name='taylor'"):
        register_metric("taylor", "nothing")(lambda inputs: {})
    with pytest.raises(ConfigError, match="needs='weights'"):
        register_metric("x", "weights")

    @register_metric("test_ones", "nothing")
    def ones(inputs):
        """All ones."""
        return importance._magnitude_l1(inputs) | {"q": None}

    try:
        assert get_metric("test_ones").description == "All ones." and "test_ones" in metric_names()
    finally:
        del importance._METRICS["test_ones"]


@pytest.mark.parametrize("metric", metric_names())
def test_metrics_score_where_the_weights_are_while_the_statistics_stay_on_the_host(metric):
    """On a GPU the statistics caches live on the host and the weights on the device: the GPU check (H200,
    2026-12-04) stopped in ``flap`` with "found at least two devices, cuda:0 and cpu". The meta device stands in
    for the GPU: every metric must score on the weights' device and return every member there."""
    model = tiny("llama")
    layers = layer_structures(model)
    pool = tokens(2, 8)
    spec = get_metric(metric)
    act = collect_activation_stats(model, layers, pool, progress=False).reduce([0, 1]) \
        if spec.needs == "activations" else None
    grads = collect_gradient_scores(model, layers, pool, [spec]) if spec.needs == "gradients" else None
    grams = collect_grams(model, layers, pool) if spec.needs == "grams" else None
    model.to("meta")
    layer = layers[1]
    inputs = ScoreInputs(layer, activation_stats=act[1] if act else {}, gradient_stats=grads[1][metric] if grads else {},
                         generator=torch.Generator().manual_seed(0), grams=grams.layers[1] if grams else {},
                         gram_tokens=grams.tokens if grams else 0)
    members = score_members(spec, inputs)
    assert {t.device.type for t in members.values() if t is not None} == {"meta"}
    units = unit_scores(layer, members, "sum")
    assert units.channels.shape == (layer.intermediate,) and units.heads.shape == (layer.num_heads,)


# ------------------------------------------------------------------------------------------- statistics


@pytest.fixture(scope="module")
def pool_stats():
    model = tiny("qwen3")
    layers = layer_structures(model)
    pool = tokens(6, 16, seed=2)
    return model, layers, pool, collect_activation_stats(model, layers, pool, batch_size=4, progress=False)


@pytest.mark.parametrize("metric", ["taylor_vector", "wanda_sp", "flap"])
def test_cache_subset_recombines_exactly(pool_stats, metric):
    model, layers, pool, cache = pool_stats
    subset = [1, 4, 5]
    direct = collect_activation_stats(model, layers, pool[subset], batch_size=2, progress=False)
    reduced, fresh = cache.reduce(subset), direct.reduce([0, 1, 2])
    spec = get_metric(metric)
    for i, layer in enumerate(layers):
        assert reduced[i]["tokens"] == fresh[i]["tokens"] == 3 * 16
        a = spec.fn(ScoreInputs(layer, activation_stats=reduced[i]))
        b = spec.fn(ScoreInputs(layer, activation_stats=fresh[i]))
        for member, x in a.items():
            if x is None:
                assert b[member] is None
                continue
            assert (x - b[member]).abs().max() <= 1e-5 * x.abs().max(), (metric, i, member)


def test_cache_shapes_do_not_grow_beyond_per_sample_tables(pool_stats):
    model, layers, pool, cache = pool_stats
    small = collect_activation_stats(model, layers, pool[:2], progress=False)
    assert cache.num_samples == 6 and small.num_samples == 2 and cache.sample_ids == [str(i) for i in range(6)]
    widths = {"q": 96, "k": 32, "v": 32, "o": 96, "gate": 128, "up": 128, "down": 128}
    expected = {f"tv:{m}": c for m, c in widths.items()} | {"sum:o": 96, "sq:o": 96, "sum:down": 128, "sq:down": 128}
    for big, little in zip(cache.layers, small.layers):
        assert {k: v.shape[1] for k, v in big.items()} == expected
        assert all(v.shape == (6, expected[k]) and v.dtype == torch.float32 for k, v in big.items())
        assert all(v.shape == (2, expected[k]) for k, v in little.items())
    per_sample = sum(v[0].numel() for layer in cache.layers for v in layer.values())
    total = sum(v.numel() for layer in cache.layers for v in layer.values())
    assert total == 6 * per_sample
    feats = cache.features()
    assert feats.shape == (6, 2 * (96 + 128)) and torch.allclose(feats.norm(dim=1), torch.ones(6))
    grads = collect_gradient_scores(model, layers, pool, [get_metric("taylor")], batch_size=4)
    for i, layer in enumerate(layers):  # one score per row / column: nothing weight-shaped is returned
        for m in importance.MEMBERS:
            assert grads[i]["taylor"][m].shape == (widths[m],)


def _all_hooks(model) -> list:
    out = []
    for module in model.modules():
        for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs"):
            out += list(getattr(module, name, {}).values())
    return out


@pytest.mark.parametrize("where", ["forward", "backward"])
@pytest.mark.parametrize("collect", ["activations", "gradients"])
def test_hooks_removed_and_flags_restored_on_error(where, collect):
    model = tiny("llama")
    layers = layer_structures(model)
    model.get_input_embeddings().weight.requires_grad_(False)
    model.train()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    baseline = len(_all_hooks(model))

    def boom(*args):
        raise RuntimeError("boom mid-pass")

    target = model.model.layers[1].mlp
    handle = (target.register_forward_hook(boom) if where == "forward" else target.register_full_backward_hook(boom))
    run = (lambda: collect_activation_stats(model, layers, tokens(4, 16), batch_size=2, progress=False)) \
        if collect == "activations" else (lambda: collect_gradient_scores(model, layers, tokens(4, 16), [get_metric("taylor")]))
    with pytest.raises(RuntimeError, match="boom mid-pass"):
        run()
    handle.remove()
    assert len(_all_hooks(model)) == baseline == 0
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    # and a normal pass afterwards leaves nothing behind either
    model.eval()
    run()
    assert not _all_hooks(model) and {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not model.training


def test_statistics_reject_bad_samples():
    model = tiny("llama")
    layers = layer_structures(model)
    with pytest.raises(ConfigError, match=r"calibration pool=\(0, 16\).*at least one sample"):
        collect_activation_stats(model, layers, torch.zeros(0, 16, dtype=torch.long), progress=False)
    with pytest.raises(ConfigError, match="calibration samples"):
        collect_gradient_scores(model, layers, torch.zeros(3, 1, dtype=torch.long), [get_metric("taylor")])
