"""GGUF export without llama.cpp: layouts, per-layer arrays, tensors read back, refusals, atomic writes, CLI,
model card. llama.cpp itself runs the files in ``test_gguf_llamacpp.py`` (marker ``llamacpp``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapruner_lightning.api import prune
from adapruner_lightning.outputs import gguf as gguf_export
from adapruner_lightning.outputs.export import load_pruned, save_pruned
from adapruner_lightning.outputs.gguf import export_gguf, export_gguf_dir, gguf_layout, pre_tokenizer_name
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.core.masking import add_bias
from adapruner_lightning.core.physical import apply_plan, make_plan
from conftest import _tiny_tokenizer, make_tiny_model
from helpers_core import block_selection


@pytest.fixture(scope="module")
def tok():
    return _tiny_tokenizer()


def pruned(family: str, tok, *, uniform: bool = False, bias: bool = False, layers: int = 3, options=None, **overrides):
    """A tiny random model of ``family`` pruned by 25% (non-uniform unless ``uniform``; ``options``: more
    PruningConfig fields) and its plan."""
    model = make_tiny_model(family, vocab_size=len(tok), layers=layers, **overrides)
    calibration = torch.randint(0, len(tok), (4, 16), generator=torch.Generator().manual_seed(0))
    plan = prune(model, metric="wanda_sp" if bias else "taylor_vector", calibration=calibration, num_samples=4,
                 keep_first=0 if uniform else 1, target_ratio=0.25, per_layer="uniform" if uniform else "auto",
                 bias_compensation=bias, progress=False, **(options or {}))
    assert plan.same_shapes == uniform
    return model, plan


def _read(path):
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items()}
    return fields, {t.name: t for t in reader.tensors}


def _values(tensor) -> np.ndarray:
    from gguf.quants import dequantize

    return dequantize(tensor.data, tensor.tensor_type).reshape(tuple(reversed([int(d) for d in tensor.shape])))


def _unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    d = weight.shape[0] // heads
    return weight.reshape(heads, d // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_non_uniform_plan_is_written_as_deci_with_per_layer_arrays_and_the_exact_weights(tmp_path, tok, family):
    model, plan = pruned(family, tok)
    result = export_gguf(model, tok, tmp_path / "m.gguf", outtype="f32", progress=False)
    fields, tensors = _read(result.path)
    assert result.layout.arch == fields["general.architecture"] == "deci"
    assert fields["deci.attention.head_count"] == [lp.num_heads for lp in plan.layers]
    assert fields["deci.attention.head_count_kv"] == [lp.num_kv_heads for lp in plan.layers]
    assert fields["deci.feed_forward_length"] == [lp.intermediate_size for lp in plan.layers]
    state = model.state_dict()
    for i, lp in enumerate(plan.layers):  # q/k come back to HF order after undoing the rope permutation
        q = _unpermute(_values(tensors[f"blk.{i}.attn_q.weight"]), lp.num_heads)
        np.testing.assert_array_equal(q, state[f"model.layers.{i}.self_attn.q_proj.weight"].numpy())
        k = _unpermute(_values(tensors[f"blk.{i}.attn_k.weight"]), lp.num_kv_heads)
        np.testing.assert_array_equal(k, state[f"model.layers.{i}.self_attn.k_proj.weight"].numpy())
        down = _values(tensors[f"blk.{i}.ffn_down.weight"])
        np.testing.assert_array_equal(down, state[f"model.layers.{i}.mlp.down_proj.weight"].numpy())
        if family == "qwen2":
            kb = _unpermute(_values(tensors[f"blk.{i}.attn_k.bias"])[:, None], lp.num_kv_heads)[:, 0]
            np.testing.assert_array_equal(kb, state[f"model.layers.{i}.self_attn.k_proj.bias"].numpy())
    assert "output.weight" in tensors  # untied head
    assert len(tensors) == result.tensors


def test_uniform_plans_keep_the_familys_own_architecture_and_tied_heads_are_not_duplicated(tmp_path, tok):
    for family, arch in (("llama", "llama"), ("qwen2", "qwen2"), ("qwen3", "qwen3"), ("mistral", "llama")):
        options = {"prune_attention": False} if family == "qwen2" else None  # llama.cpp's qwen2: q as wide as hidden
        model, plan = pruned(family, tok, uniform=True, options=options, tie_word_embeddings=True)
        fields, tensors = _read(export_gguf(model, tok, tmp_path / f"{family}.gguf", progress=False).path)
        assert fields["general.architecture"] == arch, family
        assert fields[f"{arch}.attention.head_count"] == plan.layers[0].num_heads
        assert fields[f"{arch}.feed_forward_length"] == plan.layers[0].intermediate_size
        assert "output.weight" not in tensors
        assert ("blk.0.attn_q_norm.weight" in tensors) == (family == "qwen3")  # qwen3's q/k norms travel


def test_bias_compensation_and_narrow_qwen2_attention_move_to_deci_where_the_native_loader_cannot(tmp_path, tok):
    model, _ = pruned("llama", tok, uniform=True, bias=True)
    assert gguf_layout(model).arch == "llama"
    _, tensors = _read(export_gguf(model, tok, tmp_path / "l.gguf", progress=False).path)
    np.testing.assert_allclose(_values(tensors["blk.0.attn_output.bias"]),
                               model.model.layers[0].self_attn.o_proj.bias.detach().numpy())
    assert "blk.0.ffn_down.bias" in tensors
    model, _ = pruned("qwen2", tok, uniform=True, bias=True, options={"prune_attention": False})
    assert gguf_layout(model).arch == "deci"  # llama.cpp's qwen2 reads no o_proj bias
    model, plan = pruned("qwen2", tok, uniform=True)
    assert plan.layers[0].num_heads < 6
    assert "heads x head_dim = hidden size" in gguf_layout(model).reason  # ... and sizes q by the hidden size


def test_least_squares_reconstruction_exports_its_refitted_weights_and_biases(tmp_path, tok):
    """The re-fitted o_proj/down_proj columns and the intercept biases reach the GGUF exactly (deci: biases)."""
    model, plan = pruned("llama", tok, options={"reconstruction": "lstsq"})
    assert plan.refits_weights
    layout = gguf_layout(model)
    assert layout.arch == "deci"
    _, tensors = _read(export_gguf(model, tok, tmp_path / "r.gguf", outtype="f32", progress=False).path)
    state = model.state_dict()
    for i in range(len(plan.layers)):
        np.testing.assert_array_equal(_values(tensors[f"blk.{i}.ffn_down.weight"]),
                                      state[f"model.layers.{i}.mlp.down_proj.weight"].numpy())
        if plan.layers[i].down_bias is not None:
            np.testing.assert_array_equal(_values(tensors[f"blk.{i}.ffn_down.bias"]),
                                          state[f"model.layers.{i}.mlp.down_proj.bias"].numpy())


@pytest.mark.parametrize(("family", "kwargs", "match"), [
    ("qwen3", {}, r"q_norm/k_norm.*per_layer='uniform'"),
    ("gemma3_text", {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"] * 2,
                     "query_pre_attn_scalar": 16}, r"gemma3 family.*convert_hf_to_gguf"),
])
def test_what_deci_cannot_express_is_refused_before_writing(tmp_path, tok, family, kwargs, match):
    model, _ = pruned(family, tok, layers=4, **kwargs)
    with pytest.raises(ConfigError, match=match):
        export_gguf(model, tok, tmp_path / "x.gguf", progress=False)
    assert not list(tmp_path.iterdir())


def test_unsupported_rope_scaling_tokenizer_and_outtype_are_refused(tmp_path, tok):
    model, _ = pruned("llama", tok, uniform=True)
    with pytest.raises(ConfigError, match=r"outtype.*q4"):
        export_gguf(model, tok, tmp_path / "x.gguf", outtype="q4")
    model.config.rope_parameters = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    with pytest.raises(ConfigError, match=r"rope scaling 'yarn'"):
        export_gguf(model, tok, tmp_path / "x.gguf")
    model.config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    backend = tok.backend_tokenizer
    backend.model.byte_fallback = True  # a sentencepiece-style BPE (Llama-2, Mistral)
    try:
        with pytest.raises(ConfigError, match=r"byte-level BPE.*convert_hf_to_gguf"):
            export_gguf(model, tok, tmp_path / "x.gguf")
    finally:
        backend.model.byte_fallback = False
    assert not (tmp_path / "x.gguf").exists()


def test_a_layer_with_heads_but_no_mlp_is_refused_as_deci_would_drop_it(tok):
    model, plan = pruned("llama", tok)
    mlp = model.model.layers[1].mlp
    for name in ("gate_proj", "up_proj"):
        setattr(mlp, name, torch.nn.Linear(96, 0, bias=False))
    mlp.down_proj = torch.nn.Linear(0, 96, bias=False)
    with pytest.raises(ConfigError, match=r"layer 1 keeps \d+ heads and no MLP channel"):
        gguf_layout(model)


def _without_blocks(family: str, tok, counts=None):
    """A tiny 4-layer model whose layer 0 lost part of each block, layer 1 both blocks, layer 2 its attention."""
    model = make_tiny_model(family, vocab_size=len(tok), layers=4)
    selection = block_selection(model, first_keeps_attention=True) if counts is None else counts(model)
    apply_plan(model, make_plan(model, selection))
    return model


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_removed_blocks_are_written_as_deci_zero_counts_without_their_tensors(tmp_path, tok, family):
    """deci builds no attention for a layer with 0 heads and no MLP for n_ff 0; the file holds no tensor of a
    removed block (nor its norm) and the kept ones exactly."""
    model = _without_blocks(family, tok)
    result = export_gguf(model, tok, tmp_path / "b.gguf", outtype="f32", progress=False)
    fields, tensors = _read(result.path)
    assert result.layout.arch == "deci"
    assert fields["deci.attention.head_count"] == [3, 0, 0, 6]
    assert fields["deci.attention.head_count_kv"] == [1, 0, 0, 2]
    assert fields["deci.feed_forward_length"] == [64, 0, 96, 128]
    assert not [n for n in tensors if n.startswith(("blk.2.attn", "blk.1."))]  # norms, q/k/v/o and their biases
    assert {"blk.2.ffn_norm.weight", "blk.0.attn_norm.weight", "blk.0.attn_q.weight"} <= set(tensors)
    np.testing.assert_array_equal(_values(tensors["blk.2.ffn_down.weight"]),
                                  model.state_dict()["model.layers.2.mlp.down_proj.weight"].numpy())


def test_what_deci_computes_differently_for_removed_blocks_is_refused(tmp_path, tok):
    """A last layer without MLP (deci picks the output rows inside the last layer's MLP path) and a down_proj bias
    on a layer without MLP (deci skips that layer's MLP, bias included)."""
    def last_without_mlp(model):
        selection = block_selection(model, first_keeps_attention=True)
        selection[3] = selection[1]
        return selection

    with pytest.raises(ConfigError, match=r"layer 3 is the last layer and keeps no MLP channel"):
        gguf_layout(_without_blocks("llama", tok, last_without_mlp))
    with pytest.raises(ConfigError, match=r"layer 0 keeps no head.*head size"):  # llama.cpp reads it from layer 0
        gguf_layout(_without_blocks("llama", tok, block_selection))
    model = _without_blocks("llama", tok)
    add_bias(model.model.layers[1].mlp.down_proj, [0.5] * 96, trainable=False)
    with pytest.raises(ConfigError, match=r"layer 1 has no MLP channel but a down_proj bias"):
        export_gguf(model, tok, tmp_path / "x.gguf", progress=False)
    assert not (tmp_path / "x.gguf").exists()


def test_pre_tokenizers_are_recognised_by_their_regex(tok):
    assert pre_tokenizer_name({"pre_tokenizer": {"type": "ByteLevel", "use_regex": True}}) == "gpt-2"
    digits = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                      {"type": "ByteLevel", "use_regex": True}]}
    assert pre_tokenizer_name({"pre_tokenizer": digits}) == "smollm"
    qwen = next(k for k, v in gguf_export.PRE_TOKENIZERS.items() if v == "qwen2")
    split = {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": qwen}},
                                                     {"type": "ByteLevel", "use_regex": False}]}
    assert pre_tokenizer_name({"pre_tokenizer": split}) == "qwen2"
    with pytest.raises(ConfigError, match=r"pre-tokenizer.*pre_tokenizer=NAME"):
        pre_tokenizer_name({"pre_tokenizer": {"type": "Whitespace"}})


def test_q8_0_falls_back_to_f16_where_rows_are_not_blocks_of_32_and_bf16_reads_back(tmp_path, tok):
    model, plan = pruned("llama", tok)
    q8 = export_gguf(model, tok, tmp_path / "q8.gguf", outtype="q8_0", progress=False)
    odd = [i for i, lp in enumerate(plan.layers) if lp.intermediate_size % 32]
    assert odd and {f"blk.{i}.ffn_down.weight" for i in odd} <= set(q8.fallbacks)
    _, tensors = _read(q8.path)
    gate = model.model.layers[0].mlp.gate_proj.weight.detach().numpy()
    assert np.abs(_values(tensors["blk.0.ffn_gate.weight"]) - gate).max() < 0.01 * np.abs(gate).max()
    _, tensors = _read(export_gguf(model, tok, tmp_path / "bf16.gguf", outtype="bf16", progress=False).path)
    np.testing.assert_allclose(_values(tensors["blk.0.ffn_gate.weight"]), gate, rtol=1e-2, atol=1e-6)
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"


def test_an_interrupted_write_keeps_the_previous_file(tmp_path, tok, monkeypatch):
    model, _ = pruned("llama", tok)
    out = export_gguf(model, tok, tmp_path / "m.gguf", progress=False).path
    before = out.read_bytes()
    calls = {"n": 0}
    original = gguf_export._encode

    def failing(array, qtype):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(array, qtype)

    monkeypatch.setattr(gguf_export, "_encode", failing)
    with pytest.raises(KeyboardInterrupt):
        export_gguf(model, tok, out, outtype="f32", progress=False)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_export_directory_round_trip_cli_and_model_card(tmp_path, tok, capsys):
    from adapruner_lightning.cli.main import main

    model, plan = pruned("llama", tok)
    save_pruned(model, tok, tmp_path / "pruned", plan, report={"quality": {"pruned": {"ppl/held-out": 12.5}}})
    card = (tmp_path / "pruned" / "README.md").read_text()
    assert f"{plan.params_before:,} before, {plan.params_after:,} after" in card
    assert f"| 1 | {plan.layers[1].num_heads} / 6 | {plan.layers[1].num_kv_heads} / 2 |" in card
    assert "| measure | pruned |" in card and "| ppl/held-out | 12.5 |" in card
    assert "non-uniform" in card and "load_pruned" in card
    assert main(["export", str(tmp_path / "pruned"), "--gguf", str(tmp_path / "m.gguf"), "--outtype", "f32",
                 "--no-progress"]) == 0
    assert "deci" in capsys.readouterr().out
    fields, tensors = _read(tmp_path / "m.gguf")
    reloaded, _, _ = load_pruned(tmp_path / "pruned")
    np.testing.assert_array_equal(_values(tensors["blk.2.ffn_up.weight"]),
                                  reloaded.model.layers[2].mlp.up_proj.weight.detach().numpy())
    assert fields["tokenizer.ggml.model"] == "gpt2" and len(fields["tokenizer.ggml.tokens"]) == len(tok)
    assert fields["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert main(["export", str(tmp_path), "--gguf", str(tmp_path / "y.gguf")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    direct = export_gguf_dir(tmp_path / "pruned", tmp_path / "z.gguf", outtype="f32", progress=False)
    assert direct.path.read_bytes() == (tmp_path / "m.gguf").read_bytes()


def test_a_new_family_exports_by_declaring_its_layout_on_its_spec_alone(tmp_path, tok):
    """Adding a family that exports to GGUF means one ArchitectureSpec (its ``gguf`` entry); gguf.py has no table
    of families of its own. A Llama clone under its own model_type: refused until its spec names llama.cpp's
    architecture, then written as ``deci`` (non-uniform plan) with the same tensors as a Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from adapruner_lightning.core import architectures
    from adapruner_lightning.core.architectures import ArchitectureSpec, GGUFArch, register_architecture

    class CloneConfig(LlamaConfig):
        model_type = "my_llama_clone"

    reference = make_tiny_model("llama", vocab_size=len(tok), layers=3)
    model = LlamaForCausalLM(CloneConfig(**{k: v for k, v in reference.config.to_dict().items() if k != "model_type"}))
    model.load_state_dict(reference.state_dict())
    try:
        register_architecture(ArchitectureSpec("my_llama_clone", ("my_llama_clone",)))
        with pytest.raises(ConfigError, match=r"my_llama_clone family.*one of \['llama', 'mistral', 'qwen2', 'qwen3'\]"):
            gguf_layout(model)
        register_architecture(ArchitectureSpec("my_llama_clone", ("my_llama_clone",), gguf=GGUFArch("llama")),
                              replace=True)
        calibration = torch.randint(0, len(tok), (4, 16), generator=torch.Generator().manual_seed(0))
        plan = prune(model, metric="taylor_vector", calibration=calibration, num_samples=4, keep_first=1,
                     target_ratio=0.25, progress=False)
        fields, tensors = _read(export_gguf(model, tok, tmp_path / "clone.gguf", outtype="f32", progress=False).path)
        assert fields["general.architecture"] == "deci" and not plan.same_shapes
        np.testing.assert_array_equal(_values(tensors["blk.2.ffn_down.weight"]),
                                      model.model.layers[2].mlp.down_proj.weight.detach().numpy())
    finally:
        architectures._REGISTRY.pop("my_llama_clone", None)
