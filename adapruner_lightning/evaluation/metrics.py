"""Perplexity and multiple-choice accuracy as torchmetrics metrics (summed states, synced across ranks).

Conventions follow Hugging Face and lm-evaluation-harness (lm-eval):

* :class:`Perplexity` takes labels aligned with ``input_ids`` and shifts them inside (position ``t``
  predicts token ``t + 1``); label ``-100`` is ignored. The negative log-likelihood is summed in float32
  straight away, so no logits are kept.
* :class:`MultipleChoiceAccuracy` scores one log-likelihood per choice: ``acc`` takes the arg-max of
  the summed log-likelihoods, ``acc_norm`` the arg-max of the log-likelihood divided by the choice's
  length in characters, as lm-eval's ``multiple_choice`` output type does.

Both keep only sums as state (``dist_reduce_fx="sum"``): a Lightning module can ``update`` them in
``validation_step`` and log them; :func:`evaluate_perplexity` uses the same code for one-off evaluations.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from adapruner_lightning.errors import ConfigError
from adapruner_lightning.evaluation.items import MCItem
from adapruner_lightning.progress import progress_bar

log = logging.getLogger(__name__)


#: Label value ignored by the loss, as in Hugging Face and PyTorch.
IGNORE_INDEX = -100


def model_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """Return ``device`` (moving ``model`` there) or, when ``None``, the device of the model's weights."""
    if device is not None:
        device = torch.device(device)
        model.to(device)
        return device
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def causal_lm_nll(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Summed next-token negative log-likelihood of ``labels`` under ``logits`` (HF convention).

    Position ``t`` of ``logits`` predicts ``labels[:, t + 1]``; labels equal to ``ignore_index`` are
    skipped. Computed in float32 one sequence at a time, so a half-precision ``[B, T, V]`` logits tensor is
    never copied whole.

    Args:
        logits: ``[B, T, V]`` scores.
        labels: ``[B, T]`` token ids aligned with the model's ``input_ids``.
        ignore_index: label value to skip.

    Returns:
        ``(nll_sum, n_tokens)``: a float64 scalar and a long scalar, on ``logits``' device.

    Raises:
        ConfigError: the shapes do not match.
    """
    if logits.ndim != 3 or labels.ndim != 2 or logits.shape[:2] != labels.shape:
        raise ConfigError(
            "logits/labels shapes", (tuple(logits.shape), tuple(labels.shape)), "logits [B, T, V] and labels [B, T]"
        )
    labels = labels.to(logits.device)
    nll = torch.zeros((), dtype=torch.float64, device=logits.device)
    count = torch.zeros((), dtype=torch.long, device=logits.device)
    for row_logits, row_labels in zip(logits[:, :-1], labels[:, 1:]):
        keep = row_labels != ignore_index
        if not bool(keep.any()):
            continue
        row_nll = F.cross_entropy(row_logits[keep].float(), row_labels[keep], reduction="sum")
        nll += row_nll.double()
        count += keep.sum()
    return nll, count


class Perplexity(Metric):
    """Corpus perplexity ``exp(sum NLL / number of predicted tokens)``, synced across ranks by summing.

    Args:
        ignore_index: label value that is not scored (default ``-100``).
        **kwargs: passed to :class:`torchmetrics.Metric` (e.g. ``sync_on_compute=False``).

    Example::

        ppl = Perplexity()
        ppl.update(model(input_ids).logits, input_ids)
        ppl.compute()  # tensor(23.4)
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    nll_sum: Tensor
    token_count: Tensor

    def __init__(self, ignore_index: int = IGNORE_INDEX, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ignore_index = ignore_index
        self.add_state("nll_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("token_count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(  # type: ignore[override]
        self,
        logits: Tensor | None = None,
        labels: Tensor | None = None,
        *,
        nll_sum: Tensor | float | None = None,
        n_tokens: Tensor | int | None = None,
    ) -> None:
        """Add the NLL of ``labels`` under ``logits`` (``[B, T, V]`` and ``[B, T]``, shifted inside).

        Args:
            logits: ``[B, T, V]`` scores (``None`` with ``nll_sum``/``n_tokens``).
            labels: ``[B, T]`` token ids aligned with the inputs; ``-100`` is not scored.
            nll_sum: an already summed NLL instead of logits (see :meth:`update_nll`).
            n_tokens: the number of tokens ``nll_sum`` covers.
        """
        if logits is not None and labels is not None:
            nll_sum, n_tokens = causal_lm_nll(logits.detach(), labels, self.ignore_index)
        elif nll_sum is None or n_tokens is None:
            raise ConfigError("Perplexity.update arguments", "incomplete", "(logits, labels) or (nll_sum=, n_tokens=)")
        nll = torch.as_tensor(nll_sum).detach().to(self.nll_sum.device, torch.float64)
        count = torch.as_tensor(n_tokens).detach().to(self.token_count.device, torch.long)
        if nll.numel() != 1 or count.numel() != 1:
            raise ConfigError("nll_sum/n_tokens", (tuple(nll.shape), tuple(count.shape)), "two scalars")
        if int(count) < 0:
            raise ConfigError("n_tokens", int(count), "a count >= 0")
        self.nll_sum += nll.reshape(())
        self.token_count += count.reshape(())

    def update_nll(self, nll_sum: Tensor | float, n_tokens: Tensor | int) -> None:
        """Add an already summed negative log-likelihood over ``n_tokens`` predicted tokens.

        Args:
            nll_sum: summed NLL (natural log), a scalar.
            n_tokens: how many tokens it covers.
        """
        self.update(nll_sum=nll_sum, n_tokens=n_tokens)

    def compute(self) -> Tensor:
        """Return ``exp(nll_sum / token_count)`` as a float32 scalar (``inf`` on overflow).

        Raises:
            ConfigError: no token was scored (every label was ``-100`` or nothing was added).
        """
        if int(self.token_count) == 0:
            raise ConfigError(
                "Perplexity.token_count",
                0,
                "at least one scored token",
                hint="call update() with labels that are not all -100 (each sequence needs >= 2 tokens)",
            )
        return torch.exp(self.nll_sum / self.token_count).float()


@torch.no_grad()
def evaluate_perplexity(
    model: nn.Module,
    windows: Tensor,
    *,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    progress: bool = True,
    description: str = "perplexity",
) -> float:
    """Perplexity of ``model`` on fixed, non-overlapping token windows, each scored on its own.

    The standard protocol: the caller cuts the held-out text into windows once (e.g. with
    ``adapruner_lightning.data.tokenize_windows``) and passes the same tensor for every model compared.
    Each window is its own sequence (``labels = window``), so its first token is context only. The
    model runs in eval mode with ``use_cache=False`` and gets its previous train/eval mode back.
    The result is local to this process (no cross-rank sync).

    Args:
        model: a causal LM returning ``.logits``.
        windows: ``LongTensor[n, T]`` token ids, ``T >= 2``.
        batch_size: windows per forward pass.
        device: where to run; the model is moved there. ``None``: where the model's weights are.
        progress: show a progress bar.
        description: label of the progress bar.

    Returns:
        The perplexity as a Python float.

    Raises:
        ConfigError: ``windows`` is not a non-empty 2-D integer tensor with at least 2 columns, or
            ``batch_size < 1``.
    """
    _check_windows(windows)
    if batch_size < 1:
        raise ConfigError("batch_size", batch_size, "an integer >= 1")
    device = model_device(model, device)
    metric = Perplexity(sync_on_compute=False).to(device)
    was_training = model.training
    model.eval()
    try:
        batches = windows.split(batch_size)
        for batch in progress_bar(batches, description, enabled=progress):
            batch = batch.to(device)
            logits = model(input_ids=batch, use_cache=False).logits
            metric.update(logits, batch)
    finally:
        model.train(was_training)
    value = float(metric.compute())
    log.debug("%s: %.4f over %d tokens", description, value, int(metric.token_count))
    return value


def _check_windows(windows: Any) -> None:
    """Raise :class:`ConfigError` unless ``windows`` is a usable ``LongTensor[n, T]``."""
    ok = isinstance(windows, Tensor) and windows.ndim == 2 and not windows.is_floating_point()
    if not ok or windows.shape[0] == 0 or windows.shape[1] < 2:
        shape = tuple(windows.shape) if isinstance(windows, Tensor) else type(windows).__name__
        raise ConfigError(
            "windows", shape, "a LongTensor [n_windows >= 1, seq_len >= 2]", hint="build it with data.tokenize_windows"
        )


class MultipleChoiceAccuracy(Metric):
    """Accuracy and length-normalised accuracy of log-likelihood multiple choice (lm-eval's scoring).

    ``acc``: the choice with the highest summed log-likelihood is the prediction. ``acc_norm``: the
    log-likelihood is first divided by the choice's length in characters. Ties go to the first choice
    (as ``numpy.argmax``). Items may have different numbers of choices: pad and mark the real ones with
    ``valid``.

    Args:
        **kwargs: passed to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    correct_norm: Tensor
    total: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("correct_norm", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(  # type: ignore[override]
        self, logliks: Tensor, choice_lengths: Tensor, gold: Tensor, valid: Tensor | None = None
    ) -> None:
        """Score a batch of items.

        Args:
            logliks: ``[B, C]`` summed log-likelihood of each choice.
            choice_lengths: ``[B, C]`` length of each choice in characters (for ``acc_norm``).
            gold: ``[B]`` index of the correct choice.
            valid: ``[B, C]`` bool, False for padding choices (default: all valid).

        Raises:
            ConfigError: shapes disagree, or a gold index points at a missing choice.
        """
        logliks = logliks.detach().double()
        lengths = choice_lengths.detach().to(logliks.device, torch.float64)
        gold = gold.detach().to(logliks.device, torch.long).reshape(-1)
        valid = torch.ones_like(logliks, dtype=torch.bool) if valid is None else valid.to(logliks.device, torch.bool)
        self._check(logliks, lengths, gold, valid)
        pred, pred_norm = choice_predictions(logliks, lengths, valid)
        self.correct += (pred == gold).sum().to(self.correct.device)
        self.correct_norm += (pred_norm == gold).sum().to(self.correct.device)
        self.total += torch.tensor(gold.numel(), dtype=torch.long, device=self.total.device)

    @staticmethod
    def _check(logliks: Tensor, lengths: Tensor, gold: Tensor, valid: Tensor) -> None:
        """Raise :class:`ConfigError` when the update's tensors are inconsistent."""
        if logliks.ndim != 2 or lengths.shape != logliks.shape or valid.shape != logliks.shape:
            shapes = (tuple(logliks.shape), tuple(lengths.shape), tuple(valid.shape))
            raise ConfigError("logliks/choice_lengths/valid shapes", shapes, "three equal shapes [B, C]")
        if gold.shape[0] != logliks.shape[0]:
            raise ConfigError("gold shape", tuple(gold.shape), f"[{logliks.shape[0]}] (one per item)")
        in_range = (gold >= 0) & (gold < logliks.shape[1])
        if not bool(in_range.all()) or not bool(valid.gather(1, gold.clamp(0, logliks.shape[1] - 1)[:, None]).all()):
            raise ConfigError("gold", gold.tolist(), "indices of valid choices")

    def compute(self) -> dict[str, Tensor]:
        """Return ``{"acc": ..., "acc_norm": ...}`` as float32 scalars.

        Raises:
            ConfigError: no item was scored.
        """
        if int(self.total) == 0:
            raise ConfigError("MultipleChoiceAccuracy.total", 0, "at least one scored item", hint="call update() first")
        total = self.total.double()
        return {"acc": (self.correct / total).float(), "acc_norm": (self.correct_norm / total).float()}


def choice_predictions(logliks: Tensor, choice_lengths: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """The predicted choice of each item, as lm-eval picks it (ties go to the first choice).

    Args:
        logliks: ``[B, C]`` summed log-likelihood of each choice.
        choice_lengths: ``[B, C]`` length of each choice in characters.
        valid: ``[B, C]`` bool, False for padding choices.

    Returns:
        ``(pred, pred_norm)``, each ``[B]``: the argmax of the summed log-likelihood (``acc``) and of the
        log-likelihood per character (``acc_norm``).
    """
    masked = logliks.masked_fill(~valid, -math.inf)
    normed = (logliks / choice_lengths.clamp_min(1.0)).masked_fill(~valid, -math.inf)
    return masked.argmax(dim=1), normed.argmax(dim=1)


def item_correctness(items: Sequence[MCItem], logliks: Sequence[Sequence[float]]) -> tuple[list[bool], list[bool]]:
    """Per item, whether the prediction is right, for ``acc`` and for ``acc_norm``.

    The same predictions :class:`MultipleChoiceAccuracy` counts; kept per item so that two models scored
    on the same items can be compared item by item (a paired difference has a much smaller standard error
    than two independent accuracies).

    Args:
        items: the items scored.
        logliks: per item, one log-likelihood per choice (as returned by :func:`choice_logliks`).

    Returns:
        ``(correct, correct_norm)``, one bool per item each, in the items' order.

    Raises:
        ConfigError: ``items`` is empty.
    """
    if not items:
        raise ConfigError("items", [], "at least one multiple-choice item")
    scores, lengths, gold, valid = multiple_choice_tensors(items, logliks)
    pred, pred_norm = choice_predictions(scores, lengths, valid)
    return (pred == gold).tolist(), (pred_norm == gold).tolist()


def multiple_choice_tensors(
    items: Sequence[MCItem], logliks: Sequence[Sequence[float]]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pack per-item choice log-likelihoods into the padded tensors :class:`MultipleChoiceAccuracy` takes.

    Args:
        items: the items scored.
        logliks: per item, one log-likelihood per choice (as returned by :func:`choice_logliks`).

    Returns:
        ``(logliks [B, C], choice_lengths [B, C], gold [B], valid [B, C])`` with ``C`` the largest number
        of choices; padding has log-likelihood ``-inf``, length 1 and ``valid=False``.
    """
    width = max((len(item.choices) for item in items), default=1)
    scores = torch.full((len(items), width), -math.inf, dtype=torch.float64)
    lengths = torch.ones((len(items), width), dtype=torch.float64)
    valid = torch.zeros((len(items), width), dtype=torch.bool)
    for row, (item, lls) in enumerate(zip(items, logliks, strict=True)):
        n = len(item.choices)
        scores[row, :n] = torch.tensor(list(lls), dtype=torch.float64)
        lengths[row, :n] = torch.tensor(item.choice_lengths(), dtype=torch.float64)
        valid[row, :n] = True
    gold = torch.tensor([item.gold for item in items], dtype=torch.long)
    return scores, lengths, gold, valid
