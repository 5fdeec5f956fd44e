"""CausalLMModule: dtype, attention implementation and gradient checkpointing are options (GPU recipes use bf16)."""

from __future__ import annotations

import pytest
import torch

from adapruner_lightning.errors import ConfigError
from adapruner_lightning.lightning.module import CausalLMModule


def test_dtype_attention_and_checkpointing_options(tiny_lm_dir):
    module = CausalLMModule(model=str(tiny_lm_dir), dtype="bfloat16", attn_implementation="eager",
                            gradient_checkpointing=True)
    assert {p.dtype for p in module.model.parameters()} == {torch.bfloat16}
    assert module.model.config._attn_implementation == "eager"
    assert module.model.is_gradient_checkpointing
    batch = {"input_ids": torch.randint(0, 100, (2, 16))}
    module.train()
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and module.model.model.layers[0].mlp.up_proj.weight.grad is not None


def test_default_is_float32_and_bad_dtype_is_a_clear_error(tiny_lm_dir):
    assert {p.dtype for p in CausalLMModule(model=str(tiny_lm_dir)).model.parameters()} == {torch.float32}
    with pytest.raises(ConfigError, match=r"dtype='float8'.*bfloat16"):
        CausalLMModule(model=str(tiny_lm_dir), dtype="float8")
