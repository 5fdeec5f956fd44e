"""The sliced next-token loss equals the model's own logits' loss, value and gradients, in every family."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adapruner_lightning.evaluation import logits as sliced
from helpers_core import FAMILIES, tiny, tokens


def _reference(model, batch):
    out = model(input_ids=batch, use_cache=False).logits.float()
    return F.cross_entropy(out[:, :-1].flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("chunk", [2**24, 300, 50])  # whole batch / groups of rows / one row cut along positions
def test_sliced_loss_and_gradients_equal_the_full_logits(family, chunk, monkeypatch):
    model = tiny(family).eval()
    if family == "gemma2":
        model.config.final_logit_softcapping = 5.0  # the soft-capping branch must be reproduced too
    assert sliced.split_model(model) is not None
    monkeypatch.setattr(sliced, "LOGIT_CHUNK_ELEMENTS", chunk * model.config.vocab_size // 64)
    batch = tokens(3, 12)
    params = [p for p in model.parameters() if p.requires_grad]
    expected = _reference(model, batch)
    expected.backward()
    want = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        assert torch.allclose(sliced.summed_nll(model, batch), expected, rtol=1e-5)
    got_loss = sliced.backward_summed_nll(model, batch, scale=0.5)
    assert got_loss == pytest.approx(0.5 * float(expected.detach()), rel=1e-5)
    for p, w in zip(params, want):
        assert float((p.grad - 0.5 * w).abs().max()) <= 1e-5 * float(w.abs().max())


def test_slices_cover_every_position_once():
    batch = torch.zeros(5, 33, dtype=torch.long)
    for budget in (10**9, 64 * 70, 64 * 10, 64):
        cover = torch.zeros(5, 32, dtype=torch.long)
        old = sliced.LOGIT_CHUNK_ELEMENTS
        sliced.LOGIT_CHUNK_ELEMENTS = budget
        try:
            parts = sliced._slices(batch, 64)
        finally:
            sliced.LOGIT_CHUNK_ELEMENTS = old
        for rows, positions in parts:
            cover[rows, positions] += 1
            assert len(range(5)[rows]) * len(range(32)[positions]) * 64 <= max(budget, 64)
        assert bool((cover == 1).all())


def test_unknown_head_falls_back_to_the_models_forward():
    model = tiny("llama").eval()
    model.get_decoder = lambda: model  # no separable decoder: the fallback must still be exact
    batch = tokens(2, 10)
    with torch.no_grad():
        assert sliced.split_model(model) is None
        assert torch.allclose(sliced.summed_nll(model, batch), _reference(model, batch))
