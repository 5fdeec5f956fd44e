"""The bad-input catalogue: each case fails fast, before any statistics pass or search, with a message that
names the problem and the fix."""

from __future__ import annotations

import json

import pytest
import torch

from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.core.plan import PruningPlan
from adapruner_lightning.core.session import PruningSession, check_model
from adapruner_lightning.api import prune
from conftest import make_tiny_model

CAL = torch.randint(0, 128, (4, 16))


def _model(**kw):
    return make_tiny_model("llama", vocab_size=128, layers=4, **kw)


def _no_stats(monkeypatch):
    """Make any statistics pass fail loudly: a case must be rejected before it."""
    import adapruner_lightning.core.session as pruner

    def boom(*a, **k):
        raise AssertionError("expensive work started before the bad input was rejected")

    monkeypatch.setattr(pruner, "collect_activation_stats", boom)
    monkeypatch.setattr(pruner, "collect_gradient_scores", boom)


CASES = {
    "unknown architecture": (lambda: prune(__import__("transformers").GPT2LMHeadModel(
        __import__("transformers").GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)), calibration=CAL),
        r"architecture.*register_architecture"),
    "ratio zero": (lambda: PruningConfig(target_ratio=0.0), r"target_ratio.*\(0, 1\)"),
    "ratio one": (lambda: PruningConfig(target_ratio=1.0), r"target_ratio"),
    "ratio negative": (lambda: PruningConfig(target_ratio=-0.2), r"target_ratio"),
    "unknown metric": (lambda: PruningConfig(metric="taylor_magic"), r"metric.*magnitude_l2"),
    "unknown reducer": (lambda: PruningConfig(reducer="median"), r"reducer.*first"),
    "deprecated subset_size larger than pool": (lambda: SearchConfig.of(pool_size=8, subset_size=10),
                                                r"subset_size.*pool_size"),
    "empty metric list": (lambda: SearchConfig.of(metrics=[]), r"metrics.*non-empty"),
    "keep all layers": (lambda: prune(_model(), calibration=CAL, metric="magnitude_l2", keep_first=2, keep_last=2),
                        r"keep_first/keep_last"),
    "uniform with kept layers": (lambda: PruningConfig(per_layer="uniform", keep_first=2), r"per_layer.*uniform"),
    "gradient metric without calibration": (lambda: prune(_model(), metric="taylor"), r"calibration.*needs"),
    "empty calibration text": (lambda: prune(_model(), metric="taylor", calibration=["", "  "]), r"calibration"),
    "search without objective": (lambda: prune(_model(), calibration=CAL, search=SearchConfig.of(pool_size=4)),
                                 r"objective"),
    "query_head on MHA": (lambda: prune(_model(num_key_value_heads=6), metric="magnitude_l2", calibration=CAL,
                                        attention_unit="query_head"), r"attention_unit.*kv_group"),
    "round_to not positive": (lambda: PruningConfig(round_to=0), r"round_to"),
    "layer ramp out of range": (lambda: PruningConfig(layer_ramp=5.0), r"layer_ramp"),
    "unknown search engine": (lambda: SearchConfig.of(engine="annealing"), r"engine"),
    "negative reconstruction windows": (lambda: SearchConfig.of(reconstruction_windows=-1),
                                        r"search.data.reconstruction_windows=-1.*non-negative"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_catalogue(name, monkeypatch):
    _no_stats(monkeypatch)
    build, match = CASES[name]
    with pytest.raises(ConfigError, match=match):
        build()


def test_unreachable_ratio_is_rejected_before_statistics(monkeypatch):
    session = PruningSession(_model(), PruningConfig(target_ratio=0.95, metric="magnitude_l2"), CAL, progress=False)
    _no_stats(monkeypatch)
    with pytest.raises(ConfigError, match=r"removable parameters.*lower target_ratio"):
        session.select(session.default_candidate())


def test_integer_parameters_refused_for_gradient_metrics():
    model = _model()
    model.model.layers[0].mlp.gate_proj.weight = torch.nn.Parameter(
        torch.zeros_like(model.model.layers[0].mlp.gate_proj.weight, dtype=torch.int8), requires_grad=False)
    with pytest.raises(ConfigError, match=r"floating-point"):
        check_model(model, needs_gradients=True)


def test_quantized_model_refused():
    model = _model()
    model.config.quantization_config = {"quant_method": "gguf"}
    with pytest.raises(ConfigError, match=r"de-quantized"):
        check_model(model, needs_gradients=False)


def test_plan_from_another_model(tmp_path):
    plan = prune(_model(), metric="magnitude_l2", calibration=CAL, target_ratio=0.2)
    other = make_tiny_model("llama", vocab_size=128, layers=4, intermediate_size=160)
    from adapruner_lightning.core.physical import apply_plan

    with pytest.raises(ConfigError, match=r"plan.*another model"):
        apply_plan(other, plan)


def test_plan_applied_twice(tmp_path):
    model = _model()
    plan = prune(model, metric="magnitude_l2", calibration=CAL, target_ratio=0.2)
    from adapruner_lightning.core.physical import apply_plan

    with pytest.raises(ConfigError, match=r"already applied"):
        apply_plan(model, plan)


def test_corrupted_plan_json(tmp_path):
    path = tmp_path / "pruning_plan.json"
    path.write_text('{"model_type": "llama", "layers": [')
    with pytest.raises(ConfigError, match=r"corrupted"):
        PruningPlan.load(path)
    path.write_text(json.dumps({"something": "else"}))
    with pytest.raises(ConfigError, match=r"PruningPlan"):
        PruningPlan.load(path)


def test_target_ratio_with_explicit_plan(tmp_path):
    from adapruner_lightning.lightning.callback import AdaPrunerCallback

    plan = prune(_model(), metric="magnitude_l2", calibration=CAL, target_ratio=0.2)
    path = plan.save(tmp_path / "pruning_plan.json")
    with pytest.raises(ConfigError, match=r"target_ratio.*explicit plan"):
        AdaPrunerCallback(target_ratio=0.2, plan=str(path))
    assert AdaPrunerCallback(target_ratio=None, plan=str(path)).plan_path == str(path)


def test_unsupported_strategy(tmp_path):
    from lightning.pytorch import LightningModule
    from lightning.pytorch.strategies import FSDPStrategy

    from adapruner_lightning.lightning.callback import AdaPrunerCallback

    cb = AdaPrunerCallback(target_ratio=0.2, progress=False)
    trainer = __import__("types").SimpleNamespace(strategy=FSDPStrategy())  # FSDP itself needs a GPU to start
    with pytest.raises(ConfigError, match=r"strategy.*DDPStrategy"):
        cb.setup(trainer, LightningModule(), "fit")


def test_missing_model_path():
    from adapruner_lightning.data.models import load_model

    with pytest.raises(ConfigError, match=r"nope"):
        load_model("./nope/model")


def test_gguf_that_is_not_a_model(tmp_path):
    from adapruner_lightning.data.models import load_model

    bad = tmp_path / "weights.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ConfigError, match=r"weights.gguf"):
        load_model(str(bad))


def test_empty_text_directory(tmp_path):
    from adapruner_lightning.data.text import read_texts

    with pytest.raises(ConfigError, match=r"empty|no .*txt"):
        read_texts([tmp_path])


def test_text_shorter_than_one_sample(tiny_lm_dir):
    from transformers import AutoTokenizer

    from adapruner_lightning.data.text import tokenize_windows

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    with pytest.raises(ConfigError, match=r"tokens"):
        tokenize_windows(tok, "Too short.", 128)


def test_tokenizer_without_pad_token_is_handled(tmp_path, tiny_lm_dir):
    from transformers import AutoTokenizer

    from adapruner_lightning.data.models import load_model

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    tok.pad_token = None
    target = tmp_path / "nopad"
    __import__("shutil").copytree(tiny_lm_dir, target)
    tok.save_pretrained(target)
    _, loaded = load_model(str(target))
    assert loaded.pad_token is not None and loaded.pad_token == loaded.eos_token
