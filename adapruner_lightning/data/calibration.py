"""Seeded, disjoint slices of the calibration texts: candidate pool, search objective, development, fine-tuning.

Scheme: every text is tokenised once and cut into consecutive non-overlapping windows of
``window_len = max(pool_seq_len, objective_seq_len)`` tokens, each named ``"<text>:<index>"`` (e.g.
``"Emma:17"``). Each text's windows are shuffled with a seeded :class:`torch.Generator` and the texts are
interleaved round-robin, so every prefix of the order is spread fairly over the texts. The objective takes the
first ``n_objective`` windows of that order, the pool the next ``n_pool`` (their first ``pool_seq_len`` tokens).
Of the remaining windows, ``n_dev`` (split evenly over the texts) are held back as development data: the last
remaining windows of each text, a contiguous tail of each book, so that no fine-tune window is the
neighbouring passage of a development window. Every other window is left to fine-tuning, in a seeded order
spread over the texts in proportion to their sizes (:func:`spread_order`): any prefix of it, e.g. the first
``steps x batch`` windows of a short recovery, draws from every text in proportion, never from the first book
alone. Consequences: the four sets are disjoint by construction, the objective does not depend on ``n_pool``, a
larger pool contains a smaller one (same seed), and neither depends on ``n_dev``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from adapruner_lightning.data.text import cut_windows, encode_text, tokenize_windows, uses_bos
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.progress import progress_bar

logger = logging.getLogger(__name__)

MIN_SEQ_LEN = 8


@dataclass
class DataSplits:
    """Token windows of the calibration texts, split into disjoint sets.

    Attributes:
        pool: ``LongTensor [N, pool_seq_len]``, the candidate calibration samples the search picks from.
        pool_ids: one id ``"<text>:<window index>"`` per pool row.
        objective: ``LongTensor [M, objective_seq_len]``, held apart to score pruned candidates.
        objective_ids: one id per objective row.
        finetune_ids: ids of every other window, in a seeded order spread over the texts in proportion (any
            prefix is a fair sample); a recovery fine-tune may use these and nothing else.
        window_len: tokens per window (the ids index windows of this length).
        finetune: ``LongTensor [K, window_len]``, the windows named by ``finetune_ids``, in that order.
        bos: every window starts with the tokenizer's BOS token (:func:`~adapruner_lightning.data.text.uses_bos`).
        dev: ``LongTensor [D, window_len]``, development windows that no search, fine-tune or evaluation reads:
            the tail of each text, for choosing defaults (empty unless ``n_dev``).
        dev_ids: one id per development row, by text and position.
        validation: how many of the last fine-tune windows a fit validates on (a datamodule's ``val_windows``):
            never reconstruction windows. A datamodule's own ``pruning_data()`` that validates on fine-tune
            windows sets it and validates on the last ones, as ``TextDataModule`` does.
    """

    pool: torch.Tensor
    pool_ids: list[str]
    objective: torch.Tensor
    objective_ids: list[str]
    finetune_ids: list[str]
    window_len: int = 0
    finetune: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0, dtype=torch.long))
    bos: bool = False
    dev: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0, dtype=torch.long))
    dev_ids: list[str] = field(default_factory=list)
    validation: int = 0

    def reconstruction(self, count: int) -> torch.Tensor:
        """At most ``count`` windows the least-squares reconstruction fits on beyond the pool: the first fine-tune
        windows (a seeded spread over the texts; never an objective, development or validation window)."""
        return self.finetune[:max(0, min(count, self.finetune.shape[0] - self.validation))]


def _validate(texts: dict[str, str], n_pool: int, pool_seq_len: int, n_objective: int, objective_seq_len: int,
              n_dev: int) -> None:
    if not texts:
        raise ConfigError("texts", texts, "a non-empty dict name -> text", hint="pass e.g. data.texts_for('austen:calibration')")
    if n_pool < 1:
        raise ConfigError("n_pool", n_pool, "an integer >= 1 (candidate calibration samples)")
    if n_objective < 0:
        raise ConfigError("n_objective", n_objective, "an integer >= 0 (objective samples)")
    if n_dev < 0:
        raise ConfigError("n_dev", n_dev, "an integer >= 0 (development windows held back)")
    for name, value in (("pool_seq_len", pool_seq_len), ("objective_seq_len", objective_seq_len)):
        if value < MIN_SEQ_LEN:
            raise ConfigError(name, value, f"an integer >= {MIN_SEQ_LEN} tokens", hint="64-256 is typical")


def _windows(tokenizer: Any, texts: dict[str, str], window_len: int) -> dict[str, torch.Tensor]:
    """Tokenise each text once and cut it into ``[n, window_len]`` windows (texts shorter than one get none)."""
    out = {}
    for name, text in progress_bar(list(texts.items()), "tokenising calibration texts"):
        out[name] = cut_windows(tokenizer, encode_text(tokenizer, text), window_len)
    return out


def _interleaved_order(counts: dict[str, int], generator: torch.Generator) -> list[tuple[str, int]]:
    """Seeded per-text shuffles, interleaved round-robin over the texts (sorted by name)."""
    names = sorted(counts)
    shuffled = {name: torch.randperm(counts[name], generator=generator).tolist() for name in names}
    order = []
    for round_ in range(max(counts.values(), default=0)):
        order += [(name, shuffled[name][round_]) for name in names if round_ < counts[name]]
    return order


def spread_order(counts: dict[str, int], generator: torch.Generator) -> list[tuple[str, int]]:
    """Every window of every text once, in a seeded order spread over the texts in proportion to their sizes.

    Each text's windows are shuffled; window ``j`` of a text of ``n`` windows is placed at ``(j + 0.5) / n`` on a
    common scale (ties by text name), so every prefix of ``N`` windows holds ``N x n / total`` of each text's,
    within one.

    Args:
        counts: text name -> number of windows (the names index the returned pairs).
        generator: the seeded generator of the per-text shuffles.

    Returns:
        ``(text, window index)`` pairs.
    """
    names = sorted(counts)
    keyed = []
    for name in names:
        for j, index in enumerate(torch.randperm(counts[name], generator=generator).tolist()):
            keyed.append(((j + 0.5) / counts[name], name, index))
    return [(name, index) for _, name, index in sorted(keyed)]


def _dev_tails(rest: list[tuple[str, int]], names: list[str], n_dev: int) -> list[tuple[str, int]]:
    """The development windows: the last remaining windows of each text (``n_dev`` split evenly, the last texts by
    name get the remainder), by text and position."""
    shares = [n_dev // len(names) + (1 if i >= len(names) - n_dev % len(names) else 0) for i in range(len(names))]
    dev = []
    for name, share in zip(names, shares):
        mine = sorted(index for text, index in rest if text == name)
        dev += [(name, index) for index in mine[max(0, len(mine) - share):]] if share else []
    return dev


def _stack(windows: dict[str, torch.Tensor], picks: list[tuple[str, int]], seq_len: int) -> torch.Tensor:
    if not picks:
        return torch.empty(0, seq_len, dtype=torch.long)
    return torch.stack([windows[name][index, :seq_len] for name, index in picks])


def make_splits(
    tokenizer: Any,
    texts: dict[str, str],
    *,
    n_pool: int,
    pool_seq_len: int,
    n_objective: int,
    objective_seq_len: int,
    seed: int = 0,
    n_dev: int = 0,
) -> DataSplits:
    """Cut the calibration texts into seeded, disjoint pool / objective / development / fine-tune windows.

    See the module docstring for the scheme. The result depends only on the tokenizer, the texts, the sizes
    and ``seed`` (not on dict order). The sizes have no defaults here: a search takes them from its
    ``SearchConfig.data`` (and the sample length from ``PruningConfig.sample_len``), the one place they are set.

    Args:
        tokenizer: a Hugging Face tokenizer (each window starts with BOS when the model expects it).
        texts: name -> text; use only calibration texts here (e.g. ``texts_for("austen:calibration")``).
        n_pool: candidate calibration samples N.
        pool_seq_len: tokens per pool sample.
        n_objective: objective samples M (held apart from the pool).
        objective_seq_len: tokens per objective sample.
        seed: seed of the shuffles.
        n_dev: development windows held back from fine-tuning (the tail of each text; 0: none).

    Returns:
        The :class:`DataSplits`.

    Raises:
        ConfigError: empty ``texts``, ``n_pool`` < 1, ``n_objective`` or ``n_dev`` < 0, a seq len < 8, or fewer
            than ``n_pool + n_objective + n_dev`` windows in the texts.
    """
    _validate(texts, n_pool, pool_seq_len, n_objective, objective_seq_len, n_dev)
    window_len = max(pool_seq_len, objective_seq_len)
    windows = _windows(tokenizer, texts, window_len)
    counts = {name: int(w.shape[0]) for name, w in windows.items()}
    available = sum(counts.values())
    if available < n_pool + n_objective + n_dev:
        raise ConfigError(
            "n_pool + n_objective" + (" + n_dev" if n_dev else ""), n_pool + n_objective + n_dev,
            f"at most {available} (the texts hold {available} windows of {window_len} tokens: {counts})",
            hint="lower n_pool, n_objective, n_dev or the seq lens (pool_seq_len, objective_seq_len), or add text",
        )
    generator = torch.Generator().manual_seed(seed)
    order = _interleaved_order(counts, generator)
    objective, pool, rest = order[:n_objective], order[n_objective : n_objective + n_pool], order[n_objective + n_pool :]
    dev = _dev_tails(rest, sorted(counts), n_dev)
    held = set(dev)
    remaining = {name: sorted(i for text, i in rest if text == name and (text, i) not in held) for name in counts}
    rest = [(name, remaining[name][j]) for name, j in spread_order({n: len(r) for n, r in remaining.items()}, generator)]
    logger.info("splits: %d pool x %d, %d objective x %d, %d development, %d fine-tune windows (seed %d)",
                len(pool), pool_seq_len, len(objective), objective_seq_len, len(dev), len(rest), seed)
    return DataSplits(
        pool=_stack(windows, pool, pool_seq_len),
        pool_ids=[f"{name}:{index}" for name, index in pool],
        objective=_stack(windows, objective, objective_seq_len),
        objective_ids=[f"{name}:{index}" for name, index in objective],
        finetune_ids=[f"{name}:{index}" for name, index in rest],
        window_len=window_len,
        finetune=_stack(windows, rest, window_len),
        bos=uses_bos(tokenizer),
        dev=_stack(windows, dev, window_len),
        dev_ids=[f"{name}:{index}" for name, index in dev],
    )


def dev_texts(splits: DataSplits, tokenizer: Any) -> dict[str, str]:
    """The text of the development windows, per calibration text: what development items are built from.

    Each text's development windows are decoded in position order (BOS dropped); where windows are not
    consecutive (a pool or objective window sat between them) a blank line separates the runs, so no item's
    context spans a gap.

    Args:
        splits: splits made with ``n_dev`` > 0.
        tokenizer: the tokenizer that cut them.

    Returns:
        text name -> development text (texts without development windows are left out).
    """
    runs: dict[str, list[list[int]]] = {}
    last: dict[str, int] = {}
    for row, id_ in zip(splits.dev, splits.dev_ids):
        name, index = id_.rsplit(":", 1)
        tokens = row.tolist()[1:] if splits.bos else row.tolist()
        if name in last and int(index) == last[name] + 1:
            runs[name][-1] += tokens
        else:
            runs.setdefault(name, []).append(tokens)
        last[name] = int(index)
    return {name: "\n\n".join(tokenizer.decode(run) for run in parts) for name, parts in runs.items()}


def as_token_batch(calibration: Any, tokenizer: Any, *, num_samples: int, sample_len: int, seed: int = 0) -> torch.Tensor:
    """Turn strings, a ``datasets.Dataset`` (``text`` or ``input_ids`` column) or token tensors into ``[n, T]``."""
    return pool_and_rest(calibration, tokenizer, num_samples=num_samples, sample_len=sample_len, seed=seed)[0]


def pool_and_rest(calibration: Any, tokenizer: Any, *, num_samples: int, sample_len: int, seed: int = 0,
                  rest: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`as_token_batch`'s ``[n, T]`` samples (a seeded choice of ``num_samples`` where there are more), and
    at most ``rest`` of the samples it left out, in the same seeded order (empty ``[0, T]`` when none are left)."""
    if isinstance(calibration, torch.Tensor):
        batch = calibration
    else:
        if hasattr(calibration, "column_names"):  # datasets.Dataset
            column = "input_ids" if "input_ids" in calibration.column_names else "text"
            calibration = list(calibration[column])
        calibration = list(calibration or [])
        if calibration and not isinstance(calibration[0], str):
            batch = torch.tensor([list(x)[:sample_len] for x in calibration if len(x) >= sample_len], dtype=torch.long)
        else:
            text = "\n\n".join(calibration)
            if not text.strip():
                raise ConfigError("calibration", "empty", "non-empty text, token batches or a datasets.Dataset")
            batch = tokenize_windows(tokenizer, text, sample_len)
    if batch.ndim != 2 or batch.shape[0] == 0:
        raise ConfigError("calibration", tuple(batch.shape), f"at least one sample of {sample_len} tokens",
                          hint="provide more calibration text or lower sample_len")
    if batch.shape[0] <= num_samples:
        return batch, batch[:0]
    order = torch.randperm(batch.shape[0], generator=torch.Generator().manual_seed(seed))  # not always the first ones
    return batch[order[:num_samples].sort().values], batch[order[num_samples:num_samples + rest]]
