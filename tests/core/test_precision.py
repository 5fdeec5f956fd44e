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


@pytest.mark.parametrize(("metric", "reconstruction"), [("taylor", "none"), ("obs", "lstsq")])
def test_bf16_model_stays_bf16_through_statistics_and_pruning_and_matches_float32(metric, reconstruction):
    """Gradient, activation and Gram statistics of a bf16 model on the CPU, in float32 accumulators: the model keeps
    its dtype, and the selected groups agree with the float32 model's on most units (``obs``: the pool's
    covariance inverted in float32 from a bf16 model's activations)."""
    reference = tiny("llama", layers=4)
    half = tiny("llama", layers=4).to(torch.bfloat16)
    half.load_state_dict({k: v.to(torch.bfloat16) for k, v in reference.state_dict().items()})
    pool = tokens(6, 16)
    plans = {}
    for name, model in (("f32", reference), ("bf16", half)):
        plans[name] = prune(model, metric=metric, reconstruction=reconstruction, calibration=pool, target_ratio=0.25,
                            num_samples=6, progress=False)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    kept = lambda plan: {(lp.index, c) for lp in plan.layers for c in lp.channels_removed}  # noqa: E731
    overlap = len(kept(plans["f32"]) & kept(plans["bf16"])) / max(1, len(kept(plans["f32"])))
    assert overlap > 0.8 and plans["bf16"].params_after == plans["f32"].params_after


def test_activation_statistics_of_a_bf16_model_are_float32():
    model = tiny("llama").to(torch.bfloat16)
    session = PruningSession(model, PruningConfig(metric="wanda_sp"), tokens(4, 16), progress=False)
    assert all(v.dtype == torch.float32 for layer in session.stats.layers for v in layer.values())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


#: bf16 masked-vs-physical tolerance: max |logit difference| / max |logit| (stated in the README).
BF16_LOGIT_TOLERANCE = 0.02


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
def test_bf16_masked_logits_equal_physical_within_the_stated_tolerance(family):
    """In bf16 the masked model (removed rows set to zero) and the physically pruned one sum the same non-zero
    products in a different blocking, so logits agree to bf16 rounding, not bit for bit (float32: exact, see
    test_physical.py)."""
    from adapruner_lightning.core.masking import masked
    from adapruner_lightning.core.physical import apply_plan

    model = tiny(family, layers=3).to(torch.bfloat16).eval()
    session = PruningSession(model, PruningConfig(target_ratio=0.25, metric="taylor_vector"), tokens(6, 16),
                             progress=False)
    candidate = session.default_candidate()
    selection = session.select(candidate)
    plan = session.plan(candidate, selection)
    x = tokens(2, 12, seed=5)
    with torch.no_grad(), masked(session.layers, selection):
        masked_logits = model(input_ids=x, use_cache=False).logits.float()
    apply_plan(model, plan)
    with torch.no_grad():
        physical = model(input_ids=x, use_cache=False).logits
    assert physical.dtype == torch.bfloat16 and {p.dtype for p in model.parameters()} == {torch.bfloat16}
    error = float((physical.float() - masked_logits).abs().max()) / float(masked_logits.abs().max())
    assert error <= BF16_LOGIT_TOLERANCE, error


def test_bf16_model_stays_bf16_through_search_export_and_reload(tmp_path):
    from adapruner_lightning.outputs.export import load_pruned, save_pruned
    from adapruner_lightning.core.physical import apply_plan
    from adapruner_lightning.search.config import SearchConfig
    from adapruner_lightning.search.runner import run_search

    model = tiny("llama", layers=3).to(torch.bfloat16).eval()
    session = PruningSession(model, PruningConfig(target_ratio=0.2), tokens(8, 16), objective_windows=tokens(2, 16),
                             progress=False)
    result = run_search(session, SearchConfig.of(trials=3, init_points=2, pool_size=8,
                                                 metrics=["taylor", "wanda_sp"]), progress=False)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    apply_plan(model, result.plan)
    out = save_pruned(model, None, tmp_path / "pruned", result.plan)
    reloaded, _, _ = load_pruned(out)  # default: the dtype it was saved in
    assert {p.dtype for p in reloaded.parameters()} == {torch.bfloat16}
    saved, again = model.state_dict(), reloaded.state_dict()
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)
    # logits agree to bf16 rounding only: `.to(bfloat16)` above also rounded the rotary inv_freq buffer, which a
    # model built in bf16 (from_pretrained, load_pruned) keeps in float32
    x = tokens(2, 12, seed=3)
    with torch.no_grad():
        a, b = (m(input_ids=x, use_cache=False).logits.float() for m in (reloaded, model))
    assert float((a - b).abs().max()) / float(b.abs().max()) <= BF16_LOGIT_TOLERANCE
