"""Architecture registry, head layouts, coupled-group bookkeeping and the attention-unit rules."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from adapruner_lightning.core import architectures
from adapruner_lightning.core.architectures import ArchitectureSpec, get_architecture, head_layout, register_architecture, supported_architectures
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.core.groups import build_dependency_graph, check_mlp_coupling, layer_structures, prunable_params, resolve_attention_unit, total_params
from adapruner_lightning.api import prune
from helpers_core import FAMILIES, tiny


def test_every_family_is_registered():
    assert set(FAMILIES) <= set(supported_architectures())
    assert get_architecture(SimpleNamespace(model_type="gemma3_text")).name == "gemma3"


def test_unknown_architecture_lists_supported_types_and_the_fix():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32))
    with pytest.raises(ConfigError, match=r"model_type\)='gpt2' is invalid: expected one of \[.*'llama'.*'qwen3'"
                                          r".*register_architecture"):
        prune(model, metric="magnitude_l2", progress=False)


def test_register_architecture():
    spec = ArchitectureSpec("my_clone", ("my_clone_type",), layers="transformer.h")
    try:
        assert register_architecture(spec) is spec
        assert get_architecture(SimpleNamespace(config=SimpleNamespace(model_type="my_clone_type"))) is spec
        assert "my_clone_type" in supported_architectures()
        with pytest.raises(ConfigError, match="taken by 'my_clone'.*replace=True"):
            register_architecture(ArchitectureSpec("other", ("my_clone_type",)))
        other = register_architecture(ArchitectureSpec("other", ("my_clone_type",)), replace=True)
        assert get_architecture(SimpleNamespace(model_type="my_clone_type")) is other
        layers = [object()]
        assert spec.decoder_layers(SimpleNamespace(transformer=SimpleNamespace(h=layers))) is layers
    finally:
        architectures._REGISTRY.pop("my_clone_type", None)


def test_head_layout_reads_config_and_nested_text_config():
    flat = SimpleNamespace(num_attention_heads=8, num_key_value_heads=None, hidden_size=64, intermediate_size=100,
                           num_hidden_layers=3)
    layout = head_layout(flat)
    assert (layout.num_heads, layout.num_kv_heads, layout.head_dim, layout.queries_per_kv) == (8, 8, 8, 1)
    nested = SimpleNamespace(text_config=SimpleNamespace(num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                                                         hidden_size=64, intermediate_size=128, num_hidden_layers=2))
    layout = head_layout(nested)
    assert (layout.num_heads, layout.num_kv_heads, layout.head_dim, layout.queries_per_kv) == (4, 1, 32, 4)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text"])
def test_group_costs_add_up(family):
    model = tiny(family)
    layers = layer_structures(model)
    assert prunable_params(layers) < total_params(model)
    for layer in layers:
        assert (layer.num_heads, layer.num_kv_heads, layer.queries_per_kv, layer.intermediate) == (6, 2, 3, 128)
        # removing every KV group (or every query head and KV head) removes every attention parameter
        assert layer.unit_cost("kv_group") * layer.num_kv_heads == layer.attention_params()
        assert layer.unit_cost("query_head") * layer.queries_per_kv + layer.num_kv_heads * layer.kv_cost() \
            == layer.attention_params()
        assert layer.channel_cost() * layer.intermediate == layer.mlp_params()
    graph = build_dependency_graph(model)
    for layer in layers:
        check_mlp_coupling(graph, layer)


def test_attention_unit_rules():
    gqa = SimpleNamespace(num_attention_heads=6, num_key_value_heads=2, hidden_size=96, intermediate_size=128,
                          num_hidden_layers=2, head_dim=16)
    single_kv = SimpleNamespace(**{**vars(gqa), "num_key_value_heads": 1})
    mha = SimpleNamespace(**{**vars(gqa), "num_key_value_heads": 6})
    assert resolve_attention_unit("auto", gqa) == "kv_group"
    assert resolve_attention_unit("auto", single_kv) == "query_head"
    assert resolve_attention_unit("auto", mha) == "kv_group"
    assert resolve_attention_unit("query_head", gqa) == "query_head"
    with pytest.raises(ConfigError, match=r"attention_unit='heads'.*\['auto', 'kv_group', 'query_head'\]"):
        resolve_attention_unit("heads", gqa)
    with pytest.raises(ConfigError, match="single KV head.*Fix: use attention_unit='query_head'"):
        resolve_attention_unit("kv_group", single_kv)


def test_query_head_unit_on_one_query_head_per_kv_head_model():
    model = tiny("llama", num_key_value_heads=6)  # plain multi-head attention
    with pytest.raises(ConfigError, match=r"attention_unit='query_head' is invalid: expected 'kv_group' for a model "
                                          r"with one query head per KV head"):
        prune(model, metric="magnitude_l2", attention_unit="query_head", progress=False)
    plan = prune(model, metric="magnitude_l2", attention_unit="auto", attn_share=0.5, progress=False)
    assert all(lp.num_heads == lp.num_kv_heads for lp in plan.layers)
    assert any(lp.kv_heads_removed for lp in plan.layers)
