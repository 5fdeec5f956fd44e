"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

_CORPUS = """
It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want
of a wife. However little known the feelings or views of such a man may be on his first entering a
neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered
the rightful property of some one or other of their daughters. Emma Woodhouse, handsome, clever, and rich,
with a comfortable home and happy disposition, seemed to unite some of the best blessings of existence.
The family of Dashwood had long been settled in Sussex. Their estate was large, and their residence was at
Norland Park, in the centre of their property, where, for many generations, they had lived in so
respectable a manner as to engage the general good opinion of their surrounding acquaintance.
"""


def _tiny_tokenizer():  # -> PreTrainedTokenizerFast
    """A byte-level BPE tokenizer (vocab 512) trained in milliseconds on a fixed paragraph; encodes any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised ``LlamaForCausalLM`` (hidden 64, 2 layers, 4 heads, 2 KV heads, MLP 128)
    saved with its byte-level BPE tokenizer (vocab 512, pad ``<pad>``, eos ``</s>``); returns the directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_tiny_model(model_type: str = "llama", *, vocab_size: int = 512, layers: int = 4, seed: int = 0, **overrides):
    """A tiny randomly initialised model of a real architecture (GQA: 6 query heads over 2 KV heads)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(vocab_size=vocab_size, hidden_size=96, num_hidden_layers=layers, num_attention_heads=6,
                  num_key_value_heads=2, head_dim=16, intermediate_size=128, max_position_embeddings=512)
    kwargs.update(overrides)
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def random_text(n_words: int = 6000, seed: int = 0) -> str:
    """Deterministic pseudo-English text (words of the fixture corpus, reshuffled) for tokenising tests."""
    import random

    words = _CORPUS.split()
    rng = random.Random(seed)
    sentences = []
    while sum(len(s) for s in sentences) < n_words:
        sentences.append([rng.choice(words) for _ in range(rng.randint(6, 18))])
    return "\n\n".join(" ".join(s).capitalize() + "." for s in sentences)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer tiny Llama (6 heads / 2 KV heads, hidden 96) saved with the tiny tokenizer."""
    tokenizer = _tiny_tokenizer()
    model = make_tiny_model("llama", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    path = tmp_path_factory.mktemp("tiny_lm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with two generated text files (enough for pools, objectives and fine-tuning windows)."""
    path = tmp_path_factory.mktemp("texts")
    (path / "alpha.txt").write_text(random_text(seed=1))
    (path / "beta.txt").write_text(random_text(seed=2))
    return path
