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


# ------------------------------------------------------------------------------- the teacher in a real fit
def _fit_with_teacher(tmp_path, tiny_lm_dir, text_dir, module, *, steps: int = 2, ckpt_path=None, checkpoint=False,
                      others=(), distil: bool = True, **distill):
    from lightning.pytorch import Trainer

    from adapruner_lightning import AdaPrunerCallback, DistillationConfig, TextDataModule
    from adapruner_lightning.core.config import PruningConfig
    from adapruner_lightning.lightning.recovery import RecoveryConfig
    from adapruner_lightning.search.config import SearchConfig

    pruner = AdaPrunerCallback(target_ratio=0.2, search=SearchConfig.of(trials=0), recovery=RecoveryConfig(mode="full"),
                               pruning=PruningConfig(sample_len=32, metric="magnitude_l2"), export=False,
                               output_dir=str(tmp_path / "out"), progress=False,
                               distillation=DistillationConfig(**distill) if distil else None)
    trainer = Trainer(max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0, accelerator="cpu", devices=1,
                      logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=checkpoint, default_root_dir=str(tmp_path), callbacks=[*others, pruner])
    data = TextDataModule(model=str(tiny_lm_dir), texts=[str(text_dir)], seq_len=32, batch_size=2, val_windows=2)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return trainer, pruner


def test_on_resume_the_teacher_is_rebuilt_from_the_dense_weights_not_the_checkpoint(tmp_path, tiny_lm_dir, text_dir):
    from transformers import AutoModelForCausalLM

    from adapruner_lightning import CausalLMModule

    first, _ = _fit_with_teacher(tmp_path / "a", tiny_lm_dir, text_dir, CausalLMModule(model=str(tiny_lm_dir), lr=1e-3),
                                 checkpoint=True, weight=1.0)
    ckpt = first.checkpoint_callback.last_model_path or first.checkpoint_callback.best_model_path
    resumed = CausalLMModule(model=str(tiny_lm_dir), lr=1e-3)
    trainer, pruner = _fit_with_teacher(tmp_path / "b", tiny_lm_dir, text_dir, resumed, steps=4, ckpt_path=ckpt,
                                        weight=1.0)
    assert trainer.global_step == 4 and pruner.teacher is not None
    dense = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    teacher = pruner.teacher.model.state_dict()
    for name, param in dense.state_dict().items():  # dense shapes and weights, not the checkpoint's pruned ones
        assert torch.equal(teacher[name], param), name
    assert sum(p.numel() for p in resumed.model.parameters()) < sum(p.numel() for p in dense.parameters())
    assert set(trainer.logged_metrics) >= {"train_kl"}


def test_the_teacher_is_the_frozen_dense_model_outside_optimizer_and_checkpoint(tmp_path, tiny_lm_dir, text_dir):
    from transformers import AutoModelForCausalLM

    from adapruner_lightning import CausalLMModule

    dense = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    module = CausalLMModule(model=str(tiny_lm_dir), lr=1e-3)
    trainer, pruner = _fit_with_teacher(tmp_path, tiny_lm_dir, text_dir, module, weight=0.5, temperature=2.0,
                                        teacher_dtype="bfloat16")
    teacher = pruner.teacher.model
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert next(teacher.parameters()).dtype == torch.bfloat16
    for name, param in dense.state_dict().items():  # the dense weights (bf16), untouched by the fine-tune
        assert torch.equal(teacher.state_dict()[name], param.to(torch.bfloat16)), name
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    student_params = sum(p.numel() for p in module.model.parameters())
    assert student_params < sum(p.numel() for p in teacher.parameters())  # pruned student, dense teacher
    assert not any("teacher" in key for key in module.state_dict()) and "teacher" not in pruner.state_dict()
    assert set(trainer.logged_metrics) >= {"train_kl", "train_lm_loss"}


class _Mine:
    """A plain LightningModule whose training_step is the two-line protocol, recording its losses and logits."""

    @staticmethod
    def build(tiny_lm_dir):
        from lightning.pytorch import LightningModule
        from transformers import AutoModelForCausalLM

        from adapruner_lightning import recovery_loss

        class Mine(LightningModule):
            def __init__(self):
                super().__init__()
                self.model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
                self.seen = []

            def training_step(self, batch, batch_idx):
                out = self.model(input_ids=batch["input_ids"], labels=batch["input_ids"], use_cache=False)
                loss = recovery_loss(self, batch, out)
                self.seen.append((loss.detach(), out.logits.detach(), batch["input_ids"], out.loss.detach()))
                return loss

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.0)

        return Mine()


def test_a_users_own_module_distils_with_one_line(tmp_path, tiny_lm_dir, text_dir):
    """A plain LightningModule whose training_step returns recovery_loss(self, batch, out) trains on the KL: its
    first loss is the KL of its (pruned) logits from the teacher's on that batch."""
    module = _Mine.build(tiny_lm_dir)
    _, pruner = _fit_with_teacher(tmp_path, tiny_lm_dir, text_dir, module)
    loss, logits, ids, _ = module.seen[0]
    expected = distillation_loss(logits, pruner.teacher.logits(ids))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5) and float(loss) > 0


def _another_teacher(tiny_lm_dir):
    """A callback of someone else's that also holds a ``.teacher`` (a randomly initialised model of the same shape)."""
    from lightning.pytorch import Callback
    from transformers import AutoConfig, AutoModelForCausalLM

    from adapruner_lightning.lightning.distillation import DistillationConfig, Teacher

    torch.manual_seed(123)
    other = Callback()
    other.teacher = Teacher(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_lm_dir)), DistillationConfig())
    return other


def test_recovery_loss_reaches_the_pruners_teacher_not_another_callbacks(tmp_path, tiny_lm_dir, text_dir):
    """Another callback listed first that also has a ``.teacher`` is not distilled from: the first loss is the KL
    to the pruner's dense teacher; without distillation on the pruner, the loss is the LM loss; after fit the
    teacher is detached from the module."""
    from adapruner_lightning.lightning.distillation import TEACHER_ATTR

    other = _another_teacher(tiny_lm_dir)
    module = _Mine.build(tiny_lm_dir)
    _, pruner = _fit_with_teacher(tmp_path / "a", tiny_lm_dir, text_dir, module, others=[other])
    loss, logits, ids, _ = module.seen[0]
    expected = distillation_loss(logits, pruner.teacher.logits(ids))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss) != pytest.approx(float(distillation_loss(logits, other.teacher.logits(ids))), rel=1e-3)
    assert getattr(module, TEACHER_ATTR, None) is None  # detached at the end of fit; the callback keeps it

    plain = _Mine.build(tiny_lm_dir)
    _, pruner = _fit_with_teacher(tmp_path / "b", tiny_lm_dir, text_dir, plain, others=[other], distil=False)
    assert pruner.teacher is None
    assert all(float(loss) == float(lm_loss) for loss, _, _, lm_loss in plain.seen)


def test_without_a_teacher_recovery_loss_is_the_lm_loss():
    from types import SimpleNamespace

    from adapruner_lightning import recovery_loss

    out = SimpleNamespace(loss=torch.tensor(2.5), logits=None)
    assert recovery_loss(SimpleNamespace(_trainer=None), {}, out) is out.loss
    from adapruner_lightning import DistillationConfig

    with pytest.raises(ConfigError, match="weight"):
        DistillationConfig(weight=1.5)
