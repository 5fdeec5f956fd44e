"""find_plan: the one plan pipeline (search or the configured candidate; BOS recorded as the plan is made; the
session released whatever happens), and every entry point going through it."""

from __future__ import annotations

import pytest

from helpers_core import SMALL, small_session
from adapruner_lightning.errors import SearchFailed
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.search.pipeline import find_plan
from adapruner_lightning.search.runner import SearchResult


def test_without_trials_the_configured_candidate_is_the_plan_and_bos_is_recorded():
    session = small_session(metric="magnitude_l2")
    result = find_plan(session, SearchConfig(trials=0), progress=False, bos=True)
    assert isinstance(result, SearchResult) and result.trials == [] and result.best is None
    expected = small_session(metric="magnitude_l2")
    assert result.plan.layers == expected.plan(expected.default_candidate()).layers
    assert result.plan.provenance["bos"] is True and result.plan.provenance["metric"] == "magnitude_l2"
    summary = result.summary()
    assert summary["trials"] == 0 and summary["best_trial"] is None and summary["chose"]["metric"] == "magnitude_l2"
    assert session._stats is None  # released


def test_a_search_records_bos_in_the_plan_it_makes_and_summarises_itself(tmp_path):
    session = small_session()
    result = find_plan(session, SearchConfig.of(**SMALL), trace_path=tmp_path / "t.jsonl", progress=False, bos=False)
    assert len(result.trials) == SMALL["trials"] and result.best is not None
    assert result.plan.provenance["bos"] is False and result.plan.provenance["search"]["trial"] == result.best.trial
    summary = result.summary()
    assert (summary["trials"], summary["best_trial"], summary["objective"]) == (SMALL["trials"], result.best.trial,
                                                                              "perplexity")
    assert summary["chose"]["metric"] == result.plan.provenance["metric"]
    assert summary["chose"]["samples"] == len(result.plan.provenance["subset"])
    assert session._stats is None and (tmp_path / "t.jsonl").is_file()


def test_the_session_is_released_when_the_search_fails(monkeypatch):
    session = small_session()
    session.stats  # computed: the memory a failed search must not keep
    monkeypatch.setattr(session, "score", lambda selection, biases=None: float("nan"))
    with pytest.raises(SearchFailed):
        find_plan(session, SearchConfig.of(**{**SMALL, "max_failures": 2}), progress=False)
    assert session._stats is None


def test_the_callbacks_planning_returns_a_search_result(tmp_path):
    """``lightning.planning.search_plan`` hands the callback a typed SearchResult (was an untyped dict that the
    callback parsed back into a plan)."""
    import contextlib

    import torch

    from adapruner_lightning.data.calibration import DataSplits
    from adapruner_lightning.lightning.planning import search_plan

    session = small_session()
    splits = DataSplits(pool=session.pool, pool_ids=[f"p:{i}" for i in range(12)], objective=session.objective_windows,
                        objective_ids=["o:0", "o:1", "o:2"], finetune_ids=[], bos=True)
    result = search_plan(session.model, splits, session.config, SearchConfig.of(**{**SMALL, "trials": 2}),
                         device=torch.device("cpu"), trace_path=tmp_path / "t.jsonl",
                         forward_context=contextlib.nullcontext, progress=False)
    assert isinstance(result, SearchResult) and len(result.trace()) == 2
    assert result.plan.provenance["bos"] is True and result.plan.provenance["sample_ids"][0].startswith("p:")
