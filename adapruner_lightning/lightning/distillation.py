"""Knowledge-distillation loss of the recovery fine-tune: KL from the dense teacher's next-token distributions.

:func:`distillation_loss` is ``T^2 * mean over positions of KL(softmax(teacher / T) || softmax(student / T))``
(Hinton et al.'s temperature scaling, so the gradient's size does not shrink with ``T``), optionally over the
teacher's ``top_k`` tokens plus one bucket for the rest (:func:`adapruner_lightning.core.objective.coarse_kl`, the
search objective's form; a lower bound of the full KL). Memory stays bounded: the positions are processed in
chunks of ``chunk_size`` and each chunk's float32 log-softmax is recomputed in the backward pass
(``torch.utils.checkpoint``), so autograd keeps only the logits themselves, never a float32 ``[positions, vocab]``
copy per chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from adapruner_lightning.core.objective import coarse_kl
from adapruner_lightning.errors import ConfigError


def _chunk_kl(student: Tensor, teacher: Tensor, weight: Tensor, temperature: float, top_k: int | None) -> Tensor:
    """Summed KL of one chunk of positions (``weight``: 1 for scored positions, 0 for padding)."""
    student_lp = F.log_softmax(student.float() / temperature, dim=-1)
    teacher_lp = F.log_softmax(teacher.float() / temperature, dim=-1)
    if top_k is None:
        kl = (teacher_lp.exp() * (teacher_lp - student_lp)).sum(-1)
    else:
        values, indices = teacher_lp.topk(min(top_k, teacher_lp.shape[-1]), dim=-1)
        rest = (1.0 - values.exp().sum(-1)).clamp_min(0.0)
        kl = coarse_kl(values, rest, student_lp.gather(-1, indices))
    return (kl * weight).sum()


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    chunk_size: int = 1024,
) -> Tensor:
    """Mean per-position KL divergence of the student's next-token distribution from the teacher's.

    Args:
        student_logits: ``[batch, seq, vocab]`` (any float dtype; gradients flow into it).
        teacher_logits: the same shape, from the frozen teacher (no gradient is taken).
        mask: ``[batch, seq]``, 1 where a position counts (e.g. the attention mask); default every position.
        temperature: softens both distributions; the loss is scaled by ``temperature**2``.
        top_k: keep the teacher's ``top_k`` tokens per position and one bucket for the rest (``None``: the full
            vocabulary).
        chunk_size: positions per chunk (bounds the float32 working memory to ``chunk_size x vocab``).

    Returns:
        A scalar tensor (float32).

    Raises:
        ConfigError: shapes differ, or a non-positive temperature / chunk size / top_k.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError("teacher logits", tuple(teacher_logits.shape), f"the student's shape {tuple(student_logits.shape)}",
                          hint="the teacher must share the student's tokenizer and vocabulary")
    if temperature <= 0 or chunk_size < 1 or (top_k is not None and top_k < 1):
        raise ConfigError("distillation", (temperature, chunk_size, top_k),
                          "temperature > 0, chunk_size >= 1 and top_k None or >= 1")
    vocab = student_logits.shape[-1]
    student, teacher = student_logits.reshape(-1, vocab), teacher_logits.detach().reshape(-1, vocab)
    weight = (torch.ones(student.shape[0], device=student.device) if mask is None
              else mask.reshape(-1).to(device=student.device, dtype=torch.float32))
    total = student.new_zeros((), dtype=torch.float32)
    for start in range(0, student.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        total = total + checkpoint(_chunk_kl, student[rows], teacher[rows], weight[rows], temperature, top_k,
                                   use_reentrant=False)
    return total * temperature**2 / weight.sum().clamp_min(1.0)
