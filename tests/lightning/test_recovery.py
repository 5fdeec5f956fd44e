"""Recovery set-up: LoRA wrapping through peft and getting the plain model back (merged or not)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from conftest import make_tiny_model
from adapruner_lightning.lightning.recovery import RecoveryConfig, unwrap, wrap_for_recovery


def _trained_lora(seed: int = 0):
    """A tiny Llama wrapped with LoRA whose adapters moved away from zero (as after a fine-tune), and its weights."""
    model = make_tiny_model(seed=seed)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = wrap_for_recovery(model, RecoveryConfig(mode="lora", lora_r=2))
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return wrapped, before


def test_unwrap_without_merge_is_the_plain_base_model_without_adapters():
    """The docstring's promise: the plain HF model behind the wrapper, adapters removed, its own weights."""
    wrapped, before = _trained_lora()
    plain = unwrap(wrapped, merge=False)
    assert isinstance(plain, PreTrainedModel) and not hasattr(plain, "peft_config")
    assert not any("lora" in name for name, _ in plain.named_modules())
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in before.items()}
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in before.items())


def test_unwrap_with_merge_folds_the_adapters_into_the_weights():
    wrapped, before = _trained_lora()
    x = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        expected = wrapped.eval()(x).logits
    merged = unwrap(wrapped, merge=True)
    assert isinstance(merged, PreTrainedModel) and not any("lora" in n for n, _ in merged.named_modules())
    with torch.no_grad():
        assert torch.allclose(merged(x).logits, expected, atol=1e-4)
    assert not all(torch.equal(merged.state_dict()[k], v) for k, v in before.items())


def test_unwrap_returns_a_model_without_adapters_as_it_is():
    model = make_tiny_model()
    assert unwrap(model, merge=False) is model and unwrap(model, merge=True) is model
