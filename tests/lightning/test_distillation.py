"""The distillation loss: equal to a direct KL (value and gradient), chunking-invariant, bounded saved memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adapruner_lightning.errors import ConfigError
from adapruner_lightning.lightning.distillation import distillation_loss

B, T, V = 3, 11, 50


def _logits(seed: int) -> torch.Tensor:
    return torch.randn(B, T, V, generator=torch.Generator().manual_seed(seed)) * 3


def _direct(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    lt, ls = F.log_softmax(teacher / temperature, -1), F.log_softmax(student / temperature, -1)
    kl = F.kl_div(ls, lt, log_target=True, reduction="none").sum(-1)
    return (kl * mask).sum() / mask.sum() * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_loss_and_gradient_equal_a_direct_kl_whatever_the_chunking(temperature: float) -> None:
    teacher, mask = _logits(1), (torch.rand(B, T, generator=torch.Generator().manual_seed(2)) > 0.3).float()
    expected_student = _logits(0).requires_grad_()
    expected = _direct(expected_student, teacher, mask, temperature)
    expected.backward()
    for chunk in (1, 7, 10_000):
        student = _logits(0).requires_grad_()
        loss = distillation_loss(student, teacher, mask=mask, temperature=temperature, chunk_size=chunk)
        loss.backward()
        assert float(loss) == pytest.approx(float(expected), rel=1e-5)
        assert torch.allclose(student.grad, expected_student.grad, atol=1e-6)


def test_top_k_over_the_whole_vocabulary_is_exact_and_a_smaller_k_a_lower_bound() -> None:
    student, teacher = _logits(0), _logits(1)
    full = distillation_loss(student, teacher)
    assert float(distillation_loss(student, teacher, top_k=V)) == pytest.approx(float(full), rel=1e-5)
    assert 0 < float(distillation_loss(student, teacher, top_k=5)) <= float(full)
    assert float(distillation_loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)


def test_autograd_keeps_no_float32_copy_of_the_logits_per_chunk() -> None:
    """Saved for backward: the (bf16) logits' chunks themselves (the checkpoint's inputs), nothing float32 of size
    positions x vocab (a plain loss keeps the float32 log-softmax of student and teacher: 4x these bytes)."""
    student = _logits(0).to(torch.bfloat16).requires_grad_()
    teacher = _logits(1).to(torch.bfloat16)
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = distillation_loss(student, teacher, chunk_size=8)
    inputs = 2 * B * T * V * 2  # the bf16 logits of student and teacher
    assert sum(saved) <= inputs + B * T * 4 * 2, (sum(saved), inputs)  # + the mask's float32 chunks
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad.float()).all()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="shape"):
        distillation_loss(_logits(0), _logits(1)[:, :5])
    with pytest.raises(ConfigError, match="temperature"):
        distillation_loss(_logits(0), _logits(1), temperature=0)
