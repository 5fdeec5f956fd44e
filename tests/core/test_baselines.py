"""The baselines as their references define them, checked against a direct computation on a tiny model.

FLAP (An et al., AAAI 2024; reference code CASIA-IVA-Lab/FLAP ``lib/prune.py``, ``prune_flap`` with
``--metrics WIFV --structure AL-AM``): per input channel of ``o_proj`` / ``down_proj`` the weighted input
fluctuation ``Var(X_j) * sum_i W_ij^2``, squared for attention; each layer's attention and MLP scores
standardised separately; a head scored by the mean z-score of its channels; one global threshold over all
heads and channels, each weighted by its parameter cost. Wanda-sp (defined in the same paper):
``||X_j||_2 * sum_i |W_ij|`` per input channel, a head by the sum over its channels, the same share removed
from every layer.
"""

from __future__ import annotations

import pytest
import torch

from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.session import PruningSession
from adapruner_lightning.errors import ConfigError
from conftest import make_tiny_model
from helpers_core import VOCAB, tokens

HEADS, HD, LAYERS = 6, 16, 3


def _inputs(model, pool: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every token's input to each o_proj / down_proj, ``[tokens, features]``, by hooks on the dense model."""
    seen, hooks = {}, []
    for name, module in model.named_modules():
        if name.endswith(("o_proj", "down_proj")):
            def hook(mod, args, name=name):
                seen[name] = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            hooks.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(pool)
    for h in hooks:
        h.remove()
    return seen


def _mha():
    """A tiny multi-head Llama (one head per KV group, as LLaMA-7B): FLAP's unit is the head."""
    return make_tiny_model("llama", vocab_size=VOCAB, layers=LAYERS, num_key_value_heads=HEADS, intermediate_size=64)


def _standardise(x: torch.Tensor) -> torch.Tensor:  # the reference's ``standarlization``, per row
    return (x - x.mean(dim=1, keepdim=True)) / x.std(dim=1, keepdim=True)


def _reference_flap(model, pool: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Head and channel scores ``[layers, heads]``, ``[layers, intermediate]`` computed as prune_flap does."""
    x = _inputs(model, pool)
    attn, mlp = [], []
    for i, layer in enumerate(model.model.layers):
        xo, xd = x[f"model.layers.{i}.self_attn.o_proj"], x[f"model.layers.{i}.mlp.down_proj"]
        wo, wd = layer.self_attn.o_proj.weight.double(), layer.mlp.down_proj.weight.double()
        attn.append((xo.var(0, unbiased=False) * wo.pow(2).sum(0)) ** 2)
        mlp.append(xd.var(0, unbiased=False) * wd.pow(2).sum(0))
    heads = _standardise(torch.stack(attn)).reshape(len(attn), -1, HD).mean(dim=2)
    return heads, _standardise(torch.stack(mlp))


def test_flap_reference_unit_scores_equal_the_reference_computation() -> None:
    model, pool = _mha(), tokens(6, 16)
    session = PruningSession(model, PruningConfig(metric="flap_reference", scope="standardized", num_samples=6),
                             pool, progress=False)
    ours = session.unit_scores(session.default_candidate())
    heads, channels = _reference_flap(model, pool)
    for i in range(LAYERS):
        assert torch.allclose(ours[i].heads.double(), heads[i], atol=1e-4), i
        assert torch.allclose(ours[i].kv_groups.double(), heads[i], atol=1e-4), i  # MHA: a KV group is a head
        assert torch.allclose(ours[i].channels.double(), channels[i], atol=1e-4), i


def test_flap_adaptive_structure_removes_by_one_cost_weighted_global_threshold() -> None:
    """The removed heads and channels are the lowest standardised scores across all layers and both kinds,
    taken while they fit in the parameter budget (each layer keeps its best head and channel)."""
    model, pool = _mha(), tokens(6, 16)
    session = PruningSession(model, PruningConfig(target_ratio=0.15, metric="flap_reference", scope="standardized",
                                                  num_samples=6), pool, progress=False)
    selection = session.select(session.default_candidate())
    heads, channels = _reference_flap(model, pool)
    layer = session.layers[0]
    units = []  # (score, cost, layer, kind, index), all but each layer's best head and best channel
    for i in range(LAYERS):
        units += [(float(heads[i, h]), layer.kv_cost() + layer.head_cost(), i, "head", h)
                  for h in heads[i].argsort()[:-1].tolist()]
        units += [(float(channels[i, c]), layer.channel_cost(), i, "channel", c)
                  for c in channels[i].argsort()[:-1].tolist()]
    removed, spent = {(i, k): set() for i in range(LAYERS) for k in ("head", "channel")}, 0
    for score, cost, i, kind, index in sorted(units):
        if spent + cost <= session.budget:
            removed[i, kind].add(index)
            spent += cost
    for i in range(LAYERS):
        assert set(selection[i].heads) == removed[i, "head"], i
        assert set(selection[i].channels) == removed[i, "channel"], i
    shares = {i: len(selection[i].channels) for i in range(LAYERS)}
    assert len(set(shares.values())) > 1 or any(selection[i].heads for i in range(LAYERS))  # not a uniform cut
    assert sum(sel.removed_params(session.layers[i]) for i, sel in selection.items()) <= session.budget


def test_wanda_sp_ranks_as_its_definition() -> None:
    """Within every layer, heads and channels rank as ||X_j||_2 * sum_i |W_ij| (heads: summed over their channels)."""
    model, pool = _mha(), tokens(6, 16)
    session = PruningSession(model, PruningConfig(metric="wanda_sp", num_samples=6), pool, progress=False)
    ours = session.unit_scores(session.default_candidate())
    x = _inputs(model, pool)
    for i, layer in enumerate(model.model.layers):
        xo, xd = x[f"model.layers.{i}.self_attn.o_proj"], x[f"model.layers.{i}.mlp.down_proj"]
        wo, wd = layer.self_attn.o_proj.weight.double(), layer.mlp.down_proj.weight.double()
        head = (xo.norm(dim=0) * wo.abs().sum(0)).reshape(HEADS, HD).sum(1)
        channel = xd.norm(dim=0) * wd.abs().sum(0)
        assert torch.allclose(ours[i].heads.double(), head, rtol=1e-4)
        assert torch.allclose(ours[i].channels.double(), channel, rtol=1e-4)


def test_standardized_scope_refuses_a_layer_ramp_and_uniform_shapes() -> None:
    with pytest.raises(ConfigError, match="standardized"):
        PruningConfig(scope="standardized", layer_ramp=0.5)
    with pytest.raises(ConfigError, match="uniform"):
        PruningConfig(scope="standardized", per_layer="uniform")
