"""Search objectives beyond perplexity: the KL divergence from the dense model on the objective windows.

The dense model's next-token distributions on the objective windows are computed once, before any candidate is
masked, and kept compactly (:class:`DenseReference`): per position the ``top_k`` most likely tokens' log-
probabilities and the probability mass left over. A candidate is scored by the mean over positions of

    KL(p_dense || p_candidate) over the top-k tokens plus one "every other token" bucket,

the KL divergence between the two distributions coarsened to those k + 1 outcomes. It is exact when
``top_k`` covers the vocabulary and otherwise a lower bound of the full KL (coarsening never increases a
divergence). Positions are the ones perplexity scores (each window's tokens but the last predict the next).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

#: Objectives a search can score candidates by.
ObjectiveKind = Literal["perplexity", "kl"]
OBJECTIVES: tuple[str, ...] = get_args(ObjectiveKind)
_EMPTY = 1e-6  # leftover dense mass below this is float32 rounding of an (almost) full top-k


@dataclass
class DenseReference:
    """The dense model's top-k next-token log-probabilities on the objective windows.

    Attributes:
        indices: ``int32 [M, T - 1, k]`` token ids, most likely first.
        logprobs: ``float32 [M, T - 1, k]`` their dense log-probabilities.
        rest: ``float32 [M, T - 1]`` the dense probability of every other token together.
    """

    indices: torch.Tensor
    logprobs: torch.Tensor
    rest: torch.Tensor

    @property
    def top_k(self) -> int:
        """Tokens kept per position."""
        return int(self.indices.shape[-1])


def _logprobs(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Float32 next-token log-probabilities ``[B, T - 1, V]`` of ``batch`` (the positions perplexity scores)."""
    logits = model(input_ids=batch, use_cache=False).logits[:, :-1]
    return F.log_softmax(logits.float(), dim=-1)


def _batches(windows: torch.Tensor, batch_size: int) -> list[slice]:
    return [slice(i, i + batch_size) for i in range(0, windows.shape[0], batch_size)]


@torch.no_grad()
def dense_reference(model: nn.Module, windows: torch.Tensor, *, top_k: int = 64, batch_size: int = 8) -> DenseReference:
    """Run the (unmasked) model once over ``windows`` and keep its top-``top_k`` log-probabilities per position.

    Args:
        model: the dense model.
        windows: objective windows ``[M, T]`` on the model's device.
        top_k: tokens kept per position (capped at the vocabulary size).
        batch_size: windows per forward pass.

    Returns:
        The :class:`DenseReference`, on the windows' device.
    """
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for rows in _batches(windows, batch_size):
        logprobs = _logprobs(model, windows[rows])
        values, indices = logprobs.topk(min(top_k, logprobs.shape[-1]), dim=-1)
        rest = (1.0 - values.exp().sum(-1)).clamp_min(0.0)
        parts.append((indices.to(torch.int32), values, rest))
    return DenseReference(*(torch.cat(t) for t in zip(*parts)))


def coarse_kl(reference_values: torch.Tensor, reference_rest: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """KL over the top-k outcomes plus the rest bucket, for each position (``student``: log-probs at the
    reference's top-k tokens)."""
    p = reference_values.exp()
    kl = (p * (reference_values - student)).sum(-1)
    student_rest = (1.0 - student.exp().sum(-1)).clamp_min(1e-12)
    rest = reference_rest  # below float32 resolution (top-k covers the vocabulary) the bucket is empty
    return kl + torch.where(rest > _EMPTY, rest * (rest.clamp_min(_EMPTY).log() - student_rest.log()), torch.zeros_like(rest))


@torch.no_grad()
def kl_from_reference(model: nn.Module, windows: torch.Tensor, reference: DenseReference, *,
                      batch_size: int = 8) -> float:
    """Mean per-position KL divergence of ``model`` (as it is now, e.g. masked) from ``reference``.

    Args:
        model: the candidate model.
        windows: the windows the reference was computed on.
        reference: :func:`dense_reference`'s result.
        batch_size: windows per forward pass.

    Returns:
        The mean KL in nats per position (0 for the dense model itself).
    """
    total, count = 0.0, 0
    for rows in _batches(windows, batch_size):
        student = _logprobs(model, windows[rows]).gather(-1, reference.indices[rows].long())
        kl = coarse_kl(reference.logprobs[rows], reference.rest[rows], student)
        total, count = total + float(kl.sum()), count + kl.numel()
    return total / max(count, 1)

