"""The KL search objective: exact with the whole vocabulary, a lower bound with top-k, 0 for the dense model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adapruner_lightning.core.masking import masked
from adapruner_lightning.core.objective import dense_reference, kl_from_reference
from adapruner_lightning.errors import ConfigError
from helpers_core import small_session


def _exact_kl(dense_logprobs: torch.Tensor, model, windows: torch.Tensor) -> float:
    with torch.no_grad():
        student = F.log_softmax(model(input_ids=windows).logits[:, :-1].float(), -1)
    return float((dense_logprobs.exp() * (dense_logprobs - student)).sum(-1).mean())


def test_kl_is_exact_over_the_vocabulary_a_lower_bound_with_top_k_and_zero_for_the_dense_model() -> None:
    session = small_session()
    windows, model = session.objective_windows, session.model
    with torch.no_grad():
        dense = F.log_softmax(model(input_ids=windows).logits[:, :-1].float(), -1)
    full = dense_reference(model, windows, top_k=10**6, batch_size=2)
    small = dense_reference(model, windows, top_k=5, batch_size=2)
    assert full.top_k == dense.shape[-1] and small.top_k == 5 and small.indices.dtype == torch.int32
    assert kl_from_reference(model, windows, full) == pytest.approx(0.0, abs=1e-5)
    selection = session.select(session.default_candidate())
    with masked(session.layers, selection):
        exact = _exact_kl(dense, model, windows)
        assert kl_from_reference(model, windows, full, batch_size=2) == pytest.approx(exact, rel=1e-4)
        coarse = kl_from_reference(model, windows, small, batch_size=3)
    assert 0 < coarse <= exact + 1e-6


def test_session_objective_kl_scores_minus_the_kl_and_keeps_the_dense_reference() -> None:
    session = small_session()
    selection = session.select(session.default_candidate())
    ppl_score = session.score(selection)
    session.set_objective("kl", top_k=16)
    kl_score = session.score(selection)
    reference = session._reference
    assert kl_score < 0 and kl_score != ppl_score
    assert session.score({i: type(s)() for i, s in selection.items()}) == pytest.approx(0.0, abs=1e-5)
    assert session._reference is reference  # computed once, on the dense model
    with pytest.raises(ConfigError, match="objective"):
        session.set_objective("bleu")


def test_search_with_the_kl_objective_records_it_in_the_plan_and_its_trace(tmp_path) -> None:
    from adapruner_lightning.search.config import SearchConfig
    from adapruner_lightning.search.runner import run_search
    from helpers_core import SMALL

    config = SearchConfig.of(**{**SMALL, "trials": 3, "init_points": 2}, objective="kl", kl_top_k=8,
                             trace_path=str(tmp_path / "trace.jsonl"))
    result = run_search(small_session(), config, progress=False)
    assert all(t.score <= 0 for t in result.trials if t.status == "ok")
    assert result.plan.provenance["search"]["objective"] == {"kind": "kl", "top_k": 8}
    assert '"search_objective"' in (tmp_path / "trace.jsonl").read_text().splitlines()[0]
    with pytest.raises(ConfigError, match="objective"):
        SearchConfig.of(objective="accuracy")
