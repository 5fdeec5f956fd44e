"""Export round trips: load_pruned for any plan, plain from_pretrained for uniform ones, atomic saves."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from adapruner_lightning.outputs import export
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.outputs.export import load_pruned, save_pruned
from adapruner_lightning.core.plan import PLAN_FILE, PruningPlan
from adapruner_lightning.api import prune
from adapruner_lightning.core.physical import apply_plan, make_plan
from helpers_core import block_selection, check_generation, tiny, tokens


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(input_ids=x, use_cache=False).logits


def _only_safetensors(directory) -> None:
    names = {p.name for p in directory.iterdir()}
    assert any(n.endswith(".safetensors") for n in names)
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))], names


@pytest.mark.parametrize(("family", "unit"), [("llama", "kv_group"), ("qwen3", "query_head"),
                                              ("gemma3_text", "kv_group"), ("mistral", "query_head")])
def test_non_uniform_plan_round_trips(tmp_path, family, unit):
    model = tiny(family, layers=3)
    plan = prune(model, metric="taylor_vector", calibration=tokens(), num_samples=4, keep_first=1, target_ratio=0.25,
                 attention_unit=unit, attn_share=0.4, progress=False)
    assert not plan.is_uniform
    assert any(lp.heads_removed for lp in plan.layers)
    x = tokens(2, 12, seed=3)
    out = save_pruned(model, None, tmp_path / "pruned", plan)
    _only_safetensors(out)
    config = json.loads((out / "config.json").read_text())
    assert config["head_dim"] == 16 and config[export.ORIGINAL_CONFIG_KEY]["num_attention_heads"] == 6
    reloaded, tokenizer, plan2 = load_pruned(out)
    assert tokenizer is None and plan2.to_dict() == plan.to_dict()
    assert torch.equal(_logits(reloaded, x), _logits(model, x))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text"])
def test_a_plan_removing_whole_blocks_round_trips(tmp_path, family):
    """Head-less and MLP-less layers (Linear(d, 0), a KV cache without KV heads) save, reload by replaying the plan on
    the meta device, and give identical logits and generations."""
    model = tiny(family, layers=4)
    plan = make_plan(model, block_selection(model))
    apply_plan(model, plan)
    out = save_pruned(model, None, tmp_path / "pruned", plan)
    reloaded, _, again = load_pruned(out)
    assert again.removed_blocks == plan.removed_blocks == {"attention": [0, 1], "mlp": [1]}
    assert reloaded.model.layers[1].self_attn.o_proj.weight.shape == (96, 0)
    x = tokens(2, 12, seed=3)
    assert torch.equal(_logits(reloaded, x), _logits(model, x))
    check_generation(reloaded, x)


@pytest.mark.parametrize(("family", "unit"), [("llama", "kv_group"), ("qwen2", "query_head"),
                                              ("gemma2", "query_head"), ("gemma3_text", "kv_group")])
def test_uniform_plan_loads_with_plain_from_pretrained(tmp_path, family, unit):
    model = tiny(family)
    plan = prune(model, metric="wanda_sp", calibration=tokens(), num_samples=4, per_layer="uniform",
                 attention_unit=unit, attn_share=0.4, target_ratio=0.3, progress=False)
    assert plan.is_uniform and plan.layers[0].num_heads < 6
    x = tokens(2, 12, seed=3)
    out = save_pruned(model, None, tmp_path / "pruned", plan)
    _only_safetensors(out)
    reloaded, _, _ = load_pruned(out)
    assert torch.equal(_logits(reloaded, x), _logits(model, x))
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert plain.config.num_attention_heads == plan.layers[0].num_heads
    assert plain.config.intermediate_size == plan.layers[0].intermediate_size and plain.config.head_dim == 16
    assert torch.equal(_logits(plain, x), _logits(model, x))


def test_uniform_plan_with_heads_not_dividing_hidden(tmp_path):
    """5 heads do not divide hidden 96 (Llama configs refuse that): load_pruned works, plain loading fails loudly."""
    model = tiny("llama", num_key_value_heads=6)
    plan = prune(model, metric="magnitude_l2", per_layer="uniform", attn_share=0.2, target_ratio=0.2, progress=False)
    assert plan.is_uniform and plan.layers[0].num_heads == 5
    out = save_pruned(model, None, tmp_path / "pruned", plan)
    x = tokens(2, 12, seed=3)
    assert torch.equal(_logits(load_pruned(out)[0], x), _logits(model, x))
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForCausalLM.from_pretrained(out)


def test_export_with_tokenizer_and_extra_files(tmp_path, tiny_lm_dir):
    from transformers import AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    plan = prune(model, metric="magnitude_l2", target_ratio=0.2, progress=False)
    out = save_pruned(model, tokenizer, tmp_path / "m", plan, extra_files={"report.json": '{"a": 1}'})
    reloaded, tok, _ = load_pruned(out)
    assert tok is not None and tok("hello").input_ids == tokenizer("hello").input_ids
    assert export.read_report(out) == {"a": 1} and export.read_report(tmp_path) == {}
    x = torch.randint(0, len(tokenizer), (1, 10))
    assert torch.equal(_logits(reloaded, x), _logits(model, x))
    half, _, _ = load_pruned(out, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert (_logits(half, x).float() - _logits(model, x)).abs().max() < 0.1


def _first_export(tmp_path):
    model = tiny("llama")
    plan = prune(model, metric="magnitude_l2", target_ratio=0.2, keep_last=1, progress=False)
    out = save_pruned(model, None, tmp_path / "pruned", plan)
    x = tokens(1, 10, seed=5)
    return model, plan, out, x, _logits(model, x)


def test_failed_save_keeps_previous_export(tmp_path, monkeypatch):
    model, plan, out, x, expected = _first_export(tmp_path)
    other = tiny("llama", seed=1)
    other_plan = prune(other, metric="magnitude_l1", target_ratio=0.3, progress=False)

    def broken_save(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(PruningPlan, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_pruned(other, None, out, other_plan)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"], "no temp directory is left behind"
    reloaded, _, again = load_pruned(out)
    assert again.to_dict() == plan.to_dict()
    assert torch.equal(_logits(reloaded, x), expected)


def test_failed_swap_restores_previous_export(tmp_path, monkeypatch):
    model, plan, out, x, expected = _first_export(tmp_path)
    real_replace = os.replace

    def replace(src, dst):
        if str(src).startswith(str(tmp_path / ".pruned.")) and not str(src).endswith(".old"):
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)  # the atomic-write helper (data.text) renames through os.replace
    with pytest.raises(OSError, match="rename failed"):
        save_pruned(model, None, out, plan)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]
    assert torch.equal(_logits(load_pruned(out)[0], x), expected)


def test_overwrite_replaces_previous_export(tmp_path):
    _, _, out, x, _ = _first_export(tmp_path)
    other = tiny("llama", seed=1)
    other_plan = prune(other, metric="magnitude_l1", target_ratio=0.3, progress=False)
    save_pruned(other, None, out, other_plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]
    reloaded, _, plan = load_pruned(out)
    assert plan.to_dict() == other_plan.to_dict()
    assert torch.equal(_logits(reloaded, x), _logits(other, x))


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        load_pruned(tmp_path)
    _, _, out, _, _ = _first_export(tmp_path)
    (out / PLAN_FILE).write_text('{"model_type": "llama", "layers": [')
    with pytest.raises(ConfigError, match="valid JSON.*corrupted"):
        load_pruned(out)
    (out / PLAN_FILE).unlink()
    with pytest.raises(ConfigError, match="an existing pruning_plan.json"):
        load_pruned(out)


def test_load_refuses_pickled_weights(tmp_path):
    _, plan, out, _, _ = _first_export(tmp_path)
    for f in out.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ConfigError, match=r"\*\.safetensors"):
        load_pruned(out)


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_load_pruned_never_builds_the_dense_model(tmp_path, family, monkeypatch):
    """The pruned shapes are built without materialising dense weights (peak memory ~ one pruned model): no
    parameter of the original dense width is ever allocated on a real device, and non-persistent buffers
    (rotary inv_freq) are real tensors afterwards."""
    model = tiny(family, layers=3)
    plan = prune(model, metric="taylor_vector", calibration=tokens(), num_samples=4, keep_first=1, target_ratio=0.25,
                 progress=False)
    out = save_pruned(model, None, tmp_path / "pruned", plan)
    dense_mlp = plan.original_intermediate_size
    allocated = []
    real_linear_init = torch.nn.Linear.__init__

    def recording_init(self, *args, **kwargs):
        real_linear_init(self, *args, **kwargs)
        if self.weight.device.type != "meta":
            allocated.append(tuple(self.weight.shape))

    monkeypatch.setattr(torch.nn.Linear, "__init__", recording_init)
    reloaded, _, _ = load_pruned(out)
    monkeypatch.undo()
    assert not [s for s in allocated if dense_mlp in s], allocated
    assert not [n for n, b in reloaded.named_buffers() if b.device.type == "meta"]
    assert not [n for n, p in reloaded.named_parameters() if p.device.type == "meta"]
    x = tokens(2, 12, seed=3)
    assert torch.equal(_logits(reloaded, x), _logits(model, x))


def test_prune_fits_the_reconstruction_on_the_calibration_samples_the_pool_left_over():
    """``prune(calibration=...)`` with more samples than the pool: the least-squares repair also reads up to
    ``search.data.reconstruction_windows`` of the samples left over (recorded in the plan), not the pool's twice."""
    from adapruner_lightning.search.config import SearchConfig

    calibration = tokens(10, 16)
    plans = {n: prune(tiny("llama"), metric="wanda_sp", calibration=calibration, num_samples=4, target_ratio=0.25,
                      reconstruction="lstsq", search=SearchConfig.of(trials=0, reconstruction_windows=n),
                      progress=False) for n in (0, 3, 50)}
    fits = {n: plan.provenance["reconstruction_fit"] for n, plan in plans.items()}
    assert "reconstruction_windows" not in fits[0] and fits[0]["tokens"] == 4 * 16
    assert fits[3]["reconstruction_windows"]["shape"] == [3, 16] and fits[3]["tokens"] == 7 * 16
    assert fits[50]["reconstruction_windows"]["shape"] == [6, 16]  # all that is left over
    assert plans[3].layers != plans[0].layers  # the same selection, other fitted biases
