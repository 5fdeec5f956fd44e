"""Precision: the user's dtype is never changed; statistics accumulate in float32 (issue: bf16 7-8B models)."""

from __future__ import annotations

import pytest
import torch

from adapruner_lightning.api import prune
from adapruner_lightning.core.session import PruningSession, check_model
from adapruner_lightning.core.config import PruningConfig
from helpers_core import tiny, tokens


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_check_model_never_changes_a_half_precision_model(dtype):
    model = tiny("llama").to(dtype)
    check_model(model, needs_gradients=True)
    assert {p.dtype for p in model.parameters()} == {dtype}


def test_bf16_model_stays_bf16_through_statistics_and_pruning_and_matches_float32():
    """Gradient and activation statistics of a bf16 model on the CPU, in float32 accumulators: the model keeps its
    dtype, and the selected groups agree with the float32 model's on most units."""
    reference = tiny("llama", layers=4)
    half = tiny("llama", layers=4).to(torch.bfloat16)
    half.load_state_dict({k: v.to(torch.bfloat16) for k, v in reference.state_dict().items()})
    pool = tokens(6, 16)
    plans = {}
    for name, model in (("f32", reference), ("bf16", half)):
        plans[name] = prune(model, metric="taylor", calibration=pool, target_ratio=0.25, num_samples=6, progress=False)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    kept = lambda plan: {(lp.index, c) for lp in plan.layers for c in lp.channels_removed}  # noqa: E731
    overlap = len(kept(plans["f32"]) & kept(plans["bf16"])) / max(1, len(kept(plans["f32"])))
    assert overlap > 0.8 and plans["bf16"].params_after == plans["f32"].params_after


def test_activation_statistics_of_a_bf16_model_are_float32():
    model = tiny("llama").to(torch.bfloat16)
    session = PruningSession(model, PruningConfig(metric="wanda_sp"), tokens(4, 16), progress=False)
    assert all(v.dtype == torch.float32 for layer in session.stats.layers for v in layer.values())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
