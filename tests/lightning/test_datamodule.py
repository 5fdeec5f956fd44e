"""TextDataModule: training and validation windows drawn from every text in proportion, pruning splits kept apart."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from adapruner_lightning.data.text import tokenize_windows
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.lightning.datamodule import TextDataModule
from conftest import random_text

SEQ = 16


@pytest.fixture(scope="module")
def books(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four generated texts of different lengths, named like a corpus ordered by book."""
    path = tmp_path_factory.mktemp("books")
    for i, words in enumerate((3000, 2400, 1800, 1200)):
        (path / f"book{i}.txt").write_text(random_text(n_words=words, seed=10 + i))
    return path


def _origin(data: TextDataModule) -> dict[tuple[int, ...], str]:
    """Each window's text, by its tokens."""
    return {tuple(w.tolist()): name for name, text in data._texts().items()
            for w in tokenize_windows(data.tokenizer, text, SEQ)}


def test_a_capped_fine_tune_and_the_validation_windows_draw_from_every_text_in_proportion(tiny_lm_dir, books):
    """A short recovery (``max_train_windows``) must not train on the first text alone; the old order was a
    random permutation, fair only on average."""
    data = TextDataModule(model=str(tiny_lm_dir), texts=[str(books)], seq_len=SEQ, val_windows=8, max_train_windows=40)
    data.setup("fit")
    origin = _origin(data)
    sizes = Counter(origin.values())
    total = sum(sizes.values())
    train = Counter(origin[tuple(row["input_ids"].tolist())] for row in data.train_set)
    val = Counter(origin[tuple(row["input_ids"].tolist())] for row in data.val_set)
    for name in sizes:
        assert abs(val[name] - 8 * sizes[name] / total) <= 1, val  # the last 8 of the order
        assert abs(train[name] - 40 * sizes[name] / total) <= 1, train  # the first 40
    assert sum(train.values()) == 40 and len(data.val_set) == 8
    again = TextDataModule(model=str(tiny_lm_dir), texts=[str(books)], seq_len=SEQ, val_windows=8, max_train_windows=40)
    again.setup("fit")
    assert [r["input_ids"].tolist() for r in again.train_set] == [r["input_ids"].tolist() for r in data.train_set]


def test_after_pruning_data_training_reads_only_the_fine_tune_windows(tiny_lm_dir, books):
    data = TextDataModule(model=str(tiny_lm_dir), texts=[str(books)], seq_len=SEQ, val_windows=4)
    splits = data.pruning_data(pool_size=6, pool_seq_len=SEQ, objective_windows=3, objective_seq_len=SEQ, seed=0)
    data.setup("fit")
    held = {tuple(w.tolist()) for w in (*splits.pool, *splits.objective)}
    seen = [tuple(r["input_ids"].tolist()) for r in (*data.train_set, *data.val_set)]
    assert not held & set(seen) and len(seen) == len(splits.finetune_ids)


def test_the_validation_windows_are_never_reconstruction_windows(tiny_lm_dir, books):
    """The least-squares repair fits on the first fine-tune windows (``DataSplits.reconstruction``); the windows a
    fit validates on must not be among them, however many the repair asks for."""
    data = TextDataModule(model=str(tiny_lm_dir), texts=[str(books)], seq_len=SEQ, val_windows=4)
    splits = data.pruning_data(pool_size=6, pool_seq_len=SEQ, objective_windows=3, objective_seq_len=SEQ, seed=0)
    data.setup("fit")
    val = {tuple(r["input_ids"].tolist()) for r in data.val_set}
    for count in (8, len(splits.finetune_ids)):
        fitted = {tuple(w.tolist()) for w in splits.reconstruction(count)}
        assert len(val) == 4 and fitted and not val & fitted


def test_validation_windows_that_leave_nothing_to_train_on_are_refused_before_the_search(tiny_lm_dir, books):
    """``pruning_data`` runs before the search: a ``val_windows`` that takes every fine-tune window must fail there,
    not in ``setup`` after the search has run; a negative count is refused at construction."""
    with pytest.raises(ConfigError, match="val_windows"):
        TextDataModule(model=str(tiny_lm_dir), texts=[str(books)], seq_len=SEQ, val_windows=-1)
    data = TextDataModule(model=str(tiny_lm_dir), texts=[str(books)], seq_len=SEQ, val_windows=10_000)
    with pytest.raises(ConfigError, match="val_windows=10000.*lower val_windows"):
        data.pruning_data(pool_size=6, pool_seq_len=SEQ, objective_windows=3, objective_seq_len=SEQ, seed=0)
