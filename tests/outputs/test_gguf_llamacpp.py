"""llama.cpp runs our GGUF exports: logits equal transformers' within a stated tolerance, perplexity within 1%,
tokenization identical. Needs ``llama-cpp-python`` (a llama.cpp build: ``bash scripts/build_llamacpp.sh``,
cached); skipped without it. Marker ``llamacpp``; the embedded-model test is also ``slow``.

Tolerances (max |logit difference| over every position and vocabulary entry, relative to the largest |logit|;
keys and values cached in float32), set from what was measured here with margin: f32 1e-3 (measured 4e-5 to 3e-4:
llama.cpp's own kernels and accumulation order), f16 3e-3 (about 5e-4), bf16 and q8_0 3e-2 (5e-3 to 1.5e-2), with
the argmax token equal on at least 90% of positions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adapruner_lightning.api import prune
from adapruner_lightning.outputs.gguf import export_gguf
from adapruner_lightning.core.physical import apply_plan, make_plan
from conftest import _tiny_tokenizer, make_tiny_model
from helpers_core import block_selection

llama_cpp = pytest.importorskip("llama_cpp", reason="bash scripts/build_llamacpp.sh builds and installs it")
pytestmark = pytest.mark.llamacpp
TOLERANCE = {"f32": 1e-3, "f16": 3e-3, "bf16": 3e-2, "q8_0": 3e-2}


def llamacpp_logits(path, ids: list[int], *, f32_cache: bool = True) -> np.ndarray:
    """llama.cpp's logits for every position of ``ids`` (one sequence, 2 threads). ``f32_cache``: keys and values
    cached in float32, so that the file's precision is what is compared (llama.cpp's default f16 cache adds its
    own rounding; the perplexity test keeps that default, as users run it)."""
    cache = {"type_k": 0, "type_v": 0} if f32_cache else {}  # GGML_TYPE_F32
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=max(64, len(ids)), n_batch=max(64, len(ids)),
                          logits_all=True, verbose=False, n_threads=2, **cache)
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float64)
    llm.close()
    return out


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].double().numpy()


def assert_close(got: np.ndarray, ref: np.ndarray, outtype: str) -> None:
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= TOLERANCE[outtype] * scale, (np.abs(got - ref).max(), scale)
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


@pytest.fixture(scope="module")
def tok():
    return _tiny_tokenizer()


def _model(family: str, tok, *, uniform: bool, bias: bool = False, hidden: int = 128, attention: bool = True):
    model = make_tiny_model(family, vocab_size=len(tok), layers=3, hidden_size=hidden, num_attention_heads=hidden // 16,
                            intermediate_size=2 * hidden)
    with torch.no_grad():  # logits large enough that argmax agreement means something
        model.lm_head.weight.mul_(20.0)
    calibration = torch.randint(4, len(tok), (4, 16), generator=torch.Generator().manual_seed(0))
    prune(model, metric="wanda_sp" if bias else "taylor_vector", calibration=calibration, num_samples=4,
          keep_first=0 if uniform else 1, target_ratio=0.25, per_layer="uniform" if uniform else "auto",
          bias_compensation=bias, prune_attention=attention, progress=False)
    return model


IDS = torch.randint(4, 512, (40,), generator=torch.Generator().manual_seed(1)).tolist()


@pytest.mark.parametrize(("family", "uniform", "bias", "attention", "arch"), [
    ("llama", True, False, True, "llama"), ("llama", False, False, True, "deci"), ("llama", True, True, True, "llama"),
    ("qwen2", True, False, False, "qwen2"), ("qwen2", True, False, True, "deci"), ("qwen2", False, False, True, "deci"),
    ("qwen2", True, True, False, "deci"), ("qwen3", True, False, True, "qwen3"), ("mistral", False, False, True, "deci"),
])
def test_llamacpp_logits_equal_transformers_in_f32(tmp_path, tok, family, uniform, bias, attention, arch):
    model = _model(family, tok, uniform=uniform, bias=bias, attention=attention)
    result = export_gguf(model, tok, tmp_path / "m.gguf", outtype="f32", progress=False)
    assert result.layout.arch == arch
    assert_close(llamacpp_logits(result.path, IDS), hf_logits(model, IDS), "f32")


def test_llamacpp_runs_removed_blocks_as_transformers(tmp_path, tok):
    """A head-less layer, a layer with neither attention nor MLP and a partly pruned one: deci's logits equal
    transformers' in f32."""
    model = make_tiny_model("llama", vocab_size=len(tok), layers=4, hidden_size=128, num_attention_heads=8,
                            intermediate_size=256)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    plan = make_plan(model, block_selection(model, first_keeps_attention=True))
    apply_plan(model, plan)
    assert plan.removed_blocks == {"attention": [1, 2], "mlp": [1]}
    result = export_gguf(model, tok, tmp_path / "b.gguf", outtype="f32", progress=False)
    assert result.layout.arch == "deci"
    assert_close(llamacpp_logits(result.path, IDS), hf_logits(model, IDS), "f32")


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_half_precision_and_q8_0_files_run_close_to_transformers(tmp_path, tok, outtype, family):
    model = _model(family, tok, uniform=False)
    result = export_gguf(model, tok, tmp_path / "m.gguf", outtype=outtype, progress=False)
    assert_close(llamacpp_logits(result.path, IDS), hf_logits(model, IDS), outtype)


def test_a_bf16_model_exports_from_its_own_dtype(tmp_path, tok):
    model = _model("llama", tok, uniform=False).to(torch.bfloat16)
    result = export_gguf(model, tok, tmp_path / "m.gguf", outtype="bf16", progress=False)
    assert_close(llamacpp_logits(result.path, IDS), hf_logits(model.float(), IDS), "bf16")


@pytest.mark.slow
def test_embedded_model_tokenizer_and_plans_match_in_llamacpp(tmp_path):
    """SmolLM2-135M: llama.cpp tokenizes held-out text exactly as transformers; a uniform and a non-uniform plan
    give the same logits in f32 and a perplexity within 1% of ours in f16 on held-out windows."""
    from adapruner_lightning.data.models import load_model
    from adapruner_lightning.data.text import texts_for, tokenize_windows
    from adapruner_lightning.evaluation.metrics import evaluate_perplexity

    model, tok = load_model(None)
    text = next(iter(texts_for("austen:evaluation").values()))[:20000]
    vocab = llama_cpp.Llama(model_path=str(export_gguf(model, tok, tmp_path / "d.gguf", progress=False).path),
                            vocab_only=True, verbose=False)
    assert vocab.tokenize(text.encode(), add_bos=False, special=False) == tok(text, add_special_tokens=False).input_ids
    vocab.close()
    windows = tokenize_windows(tok, text, 128, max_windows=4)
    calibration = tokenize_windows(tok, texts_for("austen:calibration")["Emma"][:40000], 64, max_windows=8)
    for uniform in (True, False):
        pruned, _ = load_model(None)
        prune(pruned, metric="taylor", calibration=calibration, num_samples=8, target_ratio=0.2,
              per_layer="uniform" if uniform else "auto", keep_first=0 if uniform else 2, progress=False)
        f32 = export_gguf(pruned, tok, tmp_path / "p32.gguf", outtype="f32", progress=False)
        assert f32.layout.arch == ("llama" if uniform else "deci")
        ids = windows[0].tolist()
        assert_close(llamacpp_logits(f32.path, ids), hf_logits(pruned, ids), "f32")
        f16 = export_gguf(pruned, tok, tmp_path / "p16.gguf", outtype="f16", progress=False)
        ours = evaluate_perplexity(pruned, windows, progress=False)
        theirs = math.exp(np.mean([_nll(llamacpp_logits(f16.path, w.tolist(), f32_cache=False), w.tolist())
                                   for w in windows]))
        assert abs(theirs / ours - 1) < 0.01, (uniform, ours, theirs)


def _nll(logits: np.ndarray, ids: list[int]) -> float:
    """Mean next-token negative log-likelihood of ``ids[1:]`` under ``logits`` (the library's own function)."""
    from adapruner_lightning.evaluation.metrics import causal_lm_nll

    total, count = causal_lm_nll(torch.from_numpy(logits)[None], torch.tensor([ids]))
    return float(total / count)
