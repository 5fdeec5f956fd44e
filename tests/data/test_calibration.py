"""Tests of adapruner_lightning.calibration: seeded, fair, disjoint pool / objective / fine-tune splits."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from adapruner_lightning.data.calibration import DataSplits, make_splits
from adapruner_lightning.data.austen import CALIBRATION_BOOKS
from adapruner_lightning.data.text import tokenize_windows
from adapruner_lightning.errors import ConfigError

WORDS = "the a of and to in was her it that she he his had not be with for as you Emma Harriet Knightley house".split()


@pytest.fixture(scope="module")
def tokenizer(tiny_llama: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    rng = random.Random(0)
    return {f"book{i}": " ".join(rng.choice(WORDS) for _ in range(600 + 150 * i)) + "." for i in range(4)}


def _all_ids(tokenizer, texts: dict[str, str], window_len: int) -> set[str]:
    return {f"{name}:{i}" for name, text in texts.items() for i in range(tokenize_windows(tokenizer, text, window_len).shape[0])}


def test_shapes_and_disjointness(tokenizer, texts: dict[str, str]) -> None:
    s = make_splits(tokenizer, texts, n_pool=12, pool_seq_len=16, n_objective=4, objective_seq_len=32, seed=1)
    assert isinstance(s, DataSplits) and s.window_len == 32
    assert s.pool.shape == (12, 16) and s.pool.dtype == torch.long and len(s.pool_ids) == 12
    assert s.objective.shape == (4, 32) and len(s.objective_ids) == 4
    pool, objective, finetune = set(s.pool_ids), set(s.objective_ids), set(s.finetune_ids)
    assert len(pool) == 12 and len(objective) == 4 and len(finetune) == len(s.finetune_ids)
    assert not pool & objective and not pool & finetune and not objective & finetune
    assert pool | objective | finetune == _all_ids(tokenizer, texts, 32)
    assert s.finetune.shape == (len(s.finetune_ids), 32)


def test_rows_are_the_named_windows(tokenizer, texts: dict[str, str]) -> None:
    s = make_splits(tokenizer, texts, n_pool=6, pool_seq_len=16, n_objective=3, objective_seq_len=32, seed=2)
    windows = {name: tokenize_windows(tokenizer, text, 32) for name, text in texts.items()}

    def window(id_: str) -> torch.Tensor:
        name, index = id_.rsplit(":", 1)
        return windows[name][int(index)]

    for row, id_ in zip(s.pool, s.pool_ids):
        assert torch.equal(row, window(id_)[:16])
    for row, id_ in zip(s.objective, s.objective_ids):
        assert torch.equal(row, window(id_))
    for row, id_ in zip(s.finetune, s.finetune_ids):
        assert torch.equal(row, window(id_))


def test_deterministic_and_seeded(tokenizer, texts: dict[str, str]) -> None:
    kwargs = dict(n_pool=8, pool_seq_len=16, n_objective=4, objective_seq_len=32)
    a = make_splits(tokenizer, texts, seed=3, **kwargs)
    b = make_splits(tokenizer, dict(reversed(list(texts.items()))), seed=3, **kwargs)  # dict order is irrelevant
    c = make_splits(tokenizer, texts, seed=4, **kwargs)
    assert a.pool_ids == b.pool_ids and a.objective_ids == b.objective_ids and a.finetune_ids == b.finetune_ids
    assert torch.equal(a.pool, b.pool) and torch.equal(a.objective, b.objective)
    assert a.pool_ids != c.pool_ids


def test_fair_interleaving_and_nesting(tokenizer, texts: dict[str, str]) -> None:
    small = make_splits(tokenizer, texts, n_pool=6, pool_seq_len=16, n_objective=4, objective_seq_len=32)
    large = make_splits(tokenizer, texts, n_pool=10, pool_seq_len=16, n_objective=4, objective_seq_len=32)
    assert Counter(i.rsplit(":", 1)[0] for i in small.objective_ids) == {name: 1 for name in texts}
    counts = Counter(i.rsplit(":", 1)[0] for i in large.pool_ids)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert small.objective_ids == large.objective_ids  # the objective does not depend on n_pool
    assert large.pool_ids[:6] == small.pool_ids  # a larger pool contains the smaller one


def _books(ids: list[str]) -> Counter:
    return Counter(i.rsplit(":", 1)[0] for i in ids)


def test_every_prefix_of_the_finetune_windows_draws_from_every_text_in_proportion(tokenizer, texts) -> None:
    """A short recovery takes the first steps x batch fine-tune windows: they must come from every text, in
    proportion to its size (the order used to be sorted by text, so a prefix was the first book alone)."""
    s = make_splits(tokenizer, texts, n_pool=4, pool_seq_len=16, n_objective=4, objective_seq_len=16, seed=5)
    sizes = _books(s.finetune_ids)
    total = sum(sizes.values())
    for n in (8, 13, 20, total // 2, total):
        counts = _books(s.finetune_ids[:n])
        for name in texts:
            assert abs(counts[name] - n * sizes[name] / total) <= 1, (n, name, counts)
    again = make_splits(tokenizer, texts, n_pool=4, pool_seq_len=16, n_objective=4, objective_seq_len=16, seed=5)
    other = make_splits(tokenizer, texts, n_pool=4, pool_seq_len=16, n_objective=4, objective_seq_len=16, seed=6)
    assert again.finetune_ids == s.finetune_ids and other.finetune_ids != s.finetune_ids  # seeded
    assert sorted(s.finetune_ids) != s.finetune_ids  # shuffled within each text too


def test_development_windows_are_the_held_back_tail_of_every_text(tokenizer, texts) -> None:
    kwargs = dict(n_pool=8, pool_seq_len=16, n_objective=4, objective_seq_len=16, seed=2)
    s = make_splits(tokenizer, texts, n_dev=10, **kwargs)
    plain = make_splits(tokenizer, texts, **kwargs)
    assert s.pool_ids == plain.pool_ids and s.objective_ids == plain.objective_ids  # n_dev changes neither
    dev, pool, objective, finetune = map(set, (s.dev_ids, s.pool_ids, s.objective_ids, s.finetune_ids))
    assert len(dev) == 10 and not dev & (pool | objective | finetune)
    assert dev | pool | objective | finetune == _all_ids(tokenizer, texts, 16)
    assert set(plain.finetune_ids) == finetune | dev
    assert _books(s.dev_ids) == {"book0": 2, "book1": 2, "book2": 3, "book3": 3}  # evenly, the remainder last
    for name in texts:  # each text's development windows are its last windows not in the pool or objective
        mine = sorted(int(i.rsplit(":", 1)[1]) for i in s.dev_ids if i.startswith(name + ":"))
        later = [int(i.rsplit(":", 1)[1]) for i in s.finetune_ids if i.startswith(name + ":")]
        assert max(later) < min(mine)
    windows = {name: tokenize_windows(tokenizer, text, 16) for name, text in texts.items()}
    for row, id_ in zip(s.dev, s.dev_ids):
        name, index = id_.rsplit(":", 1)
        assert torch.equal(row, windows[name][int(index)])
    with pytest.raises(ConfigError, match=r"n_dev=-1 is invalid"):
        make_splits(tokenizer, texts, n_dev=-1, **kwargs)


def test_pool_longer_than_objective(tokenizer, texts: dict[str, str]) -> None:
    s = make_splits(tokenizer, texts, n_pool=4, pool_seq_len=40, n_objective=2, objective_seq_len=8)
    assert s.window_len == 40 and s.pool.shape == (4, 40) and s.objective.shape == (2, 8)


def test_no_objective(tokenizer, texts: dict[str, str]) -> None:
    s = make_splits(tokenizer, texts, n_pool=4, pool_seq_len=16, n_objective=0, objective_seq_len=16)
    assert s.objective.shape == (0, 16) and s.objective_ids == []


SIZES = dict(n_pool=64, pool_seq_len=128, n_objective=16, objective_seq_len=256)


def test_errors(tokenizer, texts: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"texts=\{\} is invalid"):
        make_splits(tokenizer, {}, **SIZES)
    with pytest.raises(ConfigError, match=r"n_pool=0 is invalid: expected an integer >= 1"):
        make_splits(tokenizer, texts, **{**SIZES, "n_pool": 0})
    with pytest.raises(ConfigError, match=r"pool_seq_len=4 is invalid: expected an integer >= 8"):
        make_splits(tokenizer, texts, **{**SIZES, "pool_seq_len": 4})
    with pytest.raises(ConfigError, match=r"objective_seq_len=2 is invalid"):
        make_splits(tokenizer, texts, **{**SIZES, "objective_seq_len": 2})


def test_too_few_windows(tokenizer, texts: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"n_pool \+ n_objective=80.*at most \d+ \(the texts hold \d+ windows of 256 tokens.*lower n_pool"):
        make_splits(tokenizer, texts, **SIZES)


@pytest.mark.slow
def test_real_austen_splits() -> None:
    from adapruner_lightning.data.text import texts_for
    from adapruner_lightning.data.models import load_model

    _, tokenizer = load_model(None)
    s = make_splits(tokenizer, texts_for("austen:calibration"), **SIZES)
    assert s.pool.shape == (64, 128) and s.objective.shape == (16, 256)
    books = {i.rsplit(":", 1)[0] for i in s.pool_ids + s.objective_ids + s.finetune_ids}
    assert books == set(CALIBRATION_BOOKS)
    assert 2800 <= len(s.pool_ids) + len(s.objective_ids) + len(s.finetune_ids) <= 2830  # 721,429 tokens / 256


@pytest.mark.slow
def test_the_benchmarks_splits_recover_on_every_book_and_keep_their_development_windows() -> None:
    """The benchmarks' splits (pool 64 x 128, objective 8 x 256, 96 development windows): a 30-step recovery
    (120 windows) reads all four novels in proportion; the development windows hold the 24 that
    ``benchmarks/subsets.py`` read before they were a split (the last 24 of Sense and Sensibility)."""
    from adapruner_lightning.data.text import texts_for
    from adapruner_lightning.data.models import load_model

    _, tokenizer = load_model(None)
    s = make_splits(tokenizer, texts_for("austen:calibration"), n_pool=64, pool_seq_len=128, n_objective=8,
                    objective_seq_len=256, seed=0, n_dev=96)
    assert _books(s.finetune_ids[:120]) == {"Emma": 34, "Mansfield Park": 34, "Pride and Prejudice": 26,
                                            "Sense and Sensibility": 26}
    assert [i for i in s.dev_ids if i.startswith("Sense")] == [f"Sense and Sensibility:{i}" for i in range(585, 609)]
    assert _books(s.dev_ids) == {book: 24 for book in CALIBRATION_BOOKS}
