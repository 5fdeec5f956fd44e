"""Distillation recovery: the dense model, frozen as it was just before pruning, teaches the pruned one.

:class:`DistillationConfig` (an option of :class:`~adapruner_lightning.lightning.callback.AdaPrunerCallback`) turns it
on; the callback then keeps a :class:`Teacher` (a frozen copy of the dense model in its own dtype and device, never a
submodule of the LightningModule: not in the optimizer, not in checkpoints; on resume it is rebuilt from the dense
weights the module holds before the stored plan is replayed; under DDP every rank has its own) and attaches it to
the LightningModule (:func:`attach_teacher`), where :func:`recovery_loss` finds it. :func:`recovery_loss` is the whole protocol for a LightningModule's ``training_step``::

    out = self.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=labels)
    return recovery_loss(self, batch, out)   # the LM loss, or the distillation mix when a teacher is attached

``CausalLMModule`` does exactly this.

:func:`distillation_loss` is ``T^2 * mean over positions of KL(softmax(teacher / T) || softmax(student / T))``
(Hinton et al.'s temperature scaling, so the gradient's size does not shrink with ``T``), optionally over the
teacher's ``top_k`` tokens plus one bucket for the rest (:func:`adapruner_lightning.core.objective.coarse_kl`, the
search objective's form; a lower bound of the full KL). Memory stays bounded: the positions are processed in
chunks of ``chunk_size`` and each chunk's float32 log-softmax is recomputed in the backward pass
(``torch.utils.checkpoint``), so autograd keeps only the logits themselves, never a float32 ``[positions, vocab]``
copy per chunk.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from adapruner_lightning.config import check_positive
from adapruner_lightning.core.objective import coarse_kl
from adapruner_lightning.errors import ConfigError


@dataclass
class DistillationConfig:
    """Recovery by distillation from the dense model.

    Args:
        weight: share of the KL term in the loss, in [0, 1]; ``1 - weight`` goes to the LM loss (1: KL alone, as
            Minitron; the LM loss needs labels).
        temperature: softens teacher and student alike (the KL is scaled by its square).
        top_k: the teacher's tokens kept per position (plus one bucket for the rest); None: the whole vocabulary.
        chunk_size: positions per chunk of the loss (bounds its float32 working memory).
        teacher_dtype: the teacher's dtype (``bfloat16`` halves its memory); None: the model's.
        teacher_device: where the teacher runs (``cpu`` keeps it off a tight GPU, at the cost of speed); None: the
            model's device.
    """

    weight: float = 1.0
    temperature: float = 1.0
    top_k: Optional[int] = None
    chunk_size: int = 1024
    teacher_dtype: Optional[str] = None
    teacher_device: Optional[str] = None

    def __post_init__(self) -> None:
        if not (isinstance(self.weight, (int, float)) and 0 <= self.weight <= 1):
            raise ConfigError("distillation.weight", self.weight, "a share in [0, 1]")
        if self.temperature <= 0:
            raise ConfigError("distillation.temperature", self.temperature, "a positive number")
        check_positive("distillation.chunk_size", self.chunk_size)
        if self.top_k is not None:
            check_positive("distillation.top_k", self.top_k)
        if self.teacher_dtype is not None:
            from adapruner_lightning.data.models import resolve_dtype

            resolve_dtype(self.teacher_dtype)


class Teacher:
    """A frozen copy of the dense model (eval mode, no gradients), held outside any LightningModule."""

    def __init__(self, model: nn.Module, config: DistillationConfig) -> None:
        from adapruner_lightning.data.models import resolve_dtype

        self.config = config
        self.model = copy.deepcopy(model).eval()
        device = config.teacher_device or next(model.parameters()).device
        dtype = resolve_dtype(config.teacher_dtype) if config.teacher_dtype else None
        self.model.to(device=device, dtype=dtype)
        for param in self.model.parameters():
            param.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        """Where the teacher runs."""
        return next(self.model.parameters()).device

    @torch.no_grad()
    def logits(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The teacher's logits for a batch (computed on its device, returned on ``input_ids``' device)."""
        mask = None if attention_mask is None else attention_mask.to(self.device)
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=mask, use_cache=False)
        return out.logits.to(input_ids.device)

    def loss(self, batch: dict[str, Tensor], outputs: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """The mixed recovery loss of a student's ``outputs`` on ``batch`` and its parts (for logging)."""
        mask = batch.get("attention_mask")
        kl = distillation_loss(outputs.logits, self.logits(batch["input_ids"], mask), mask=mask,
                               temperature=self.config.temperature, top_k=self.config.top_k,
                               chunk_size=self.config.chunk_size)
        weight = self.config.weight
        if weight < 1 and getattr(outputs, "loss", None) is None:
            raise ConfigError("distillation.weight", weight, "1.0 when the model computes no LM loss",
                              hint="pass labels to the model, or set distillation.weight=1.0")
        loss = kl if weight == 1 else weight * kl + (1 - weight) * outputs.loss
        parts = {"train_kl": kl.detach()}
        if getattr(outputs, "loss", None) is not None:
            parts["train_lm_loss"] = outputs.loss.detach()
        return loss, parts


#: the LightningModule attribute through which a teacher reaches :func:`recovery_loss` (set by :func:`attach_teacher`)
TEACHER_ATTR = "adapruner_teacher"


def attach_teacher(module: Any, teacher: Teacher | None) -> None:
    """Make ``teacher`` the one :func:`recovery_loss` distils ``module`` from (None: none, the LM loss).

    ``AdaPrunerCallback(distillation=...)`` calls this in ``setup`` and detaches it in ``teardown``. The teacher is a
    plain attribute, never a submodule: not in the optimizer, not in checkpoints."""
    setattr(module, TEACHER_ATTR, teacher)


def recovery_loss(module: Any, batch: dict[str, Tensor], outputs: Any) -> Tensor:
    """The recovery loss of a ``training_step``: ``outputs.loss`` (the LM loss), or, when a distillation teacher is
    attached to the module (:func:`attach_teacher`; ``AdaPrunerCallback(distillation=...)`` attaches the dense
    model), the KL to the teacher mixed with it; the parts are logged as ``train_kl`` / ``train_lm_loss``.

    Args:
        module: the LightningModule (its ``adapruner_teacher`` attribute, when set, is the teacher).
        batch: the batch (``input_ids``, optional ``attention_mask``), as given to the model.
        outputs: the model's outputs (``.logits``, and ``.loss`` when labels were passed).

    Returns:
        The loss to return from ``training_step``.
    """
    teacher = getattr(module, TEACHER_ATTR, None)
    if teacher is None:
        return outputs.loss
    loss, parts = teacher.loss(batch, outputs)
    module.log_dict(parts, on_step=True, on_epoch=False, sync_dist=False)
    return loss


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
