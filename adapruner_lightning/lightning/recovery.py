"""Recovery fine-tuning set-up: LoRA wrapping through peft (or full fine-tuning), and merging at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from adapruner_lightning.config import check_literal
from adapruner_lightning.errors import ConfigError

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: how the rest of ``fit`` recovers: LoRA adapters, every weight, or nothing (frozen)
RecoveryMode = Literal["lora", "full", "none"]


@dataclass
class RecoveryConfig:
    """How the rest of ``fit`` recovers quality after pruning.

    Args:
        mode: ``"lora"`` (peft adapters; LLM-Pruner uses r=8, alpha=16), ``"full"`` or ``"none"`` (frozen).
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: dropout on the LoRA path.
        target_modules: module names receiving adapters (must exist in the model).
        merge_on_end: merge the adapters into the weights at the end of fit (the export is then a plain model).
    """

    mode: RecoveryMode = "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    merge_on_end: bool = True

    def __post_init__(self) -> None:
        check_literal("recovery.mode", self.mode, RecoveryMode)
        if self.lora_r < 1:
            raise ConfigError("recovery.lora_r", self.lora_r, "a positive rank")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError("recovery.lora_dropout", self.lora_dropout, "a probability in [0, 1)")


def check_lora_targets(model: nn.Module, config: RecoveryConfig) -> None:
    """Raise a clear error before any work if a LoRA target module name matches nothing in ``model``."""
    if config.mode != "lora":
        return
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in config.target_modules if t not in names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError("recovery.target_modules", missing, f"module names present in the model, e.g. {linear}")


def wrap_for_recovery(model: nn.Module, config: RecoveryConfig) -> nn.Module:
    """Return the model to fine-tune: peft-wrapped for LoRA, itself (trainable) for full, frozen for none."""
    if config.mode == "lora":
        from peft import LoraConfig, get_peft_model

        check_lora_targets(model, config)
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(config.target_modules), task_type="CAUSAL_LM")
        return get_peft_model(model, lora)
    for p in model.parameters():
        p.requires_grad_(config.mode == "full")
    return model


def unwrap(model: nn.Module, *, merge: bool) -> nn.Module:
    """The plain HF model behind a peft wrapper: the adapters folded into its weights when ``merge``, else removed
    (the base weights as they were before the fine-tune). A model without adapters is returned as it is."""
    if not hasattr(model, "peft_config"):
        return model
    return model.merge_and_unload() if merge else model.unload()
