"""The search starts from the published baselines' settings (warm start): FLAP's reference configuration and
LLM-Pruner's default are its first trials whenever they lie in the space, so its best objective is never worse
than theirs; explicit points are checked against the space."""

from __future__ import annotations

import pytest

from adapruner_lightning.core.session import Candidate
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.search.config import BASELINE_POINTS, SearchConfig, SearchSpaceConfig
from adapruner_lightning.search.runner import run_search
from adapruner_lightning.search.space import SearchSpace
from helpers_core import SMALL
from helpers_core import small_session as _session


def test_default_warm_start_is_the_baselines_that_fit_the_space():
    wide = SearchSpaceConfig()
    assert wide.warm_points() == [dict(p) for p in BASELINE_POINTS]
    narrow = SearchSpaceConfig(metrics=["taylor", "wanda_sp"], max_keep_first=1)  # FLAP's metric absent, keep 4 too many
    assert narrow.warm_points() == []
    unsearched = SearchSpaceConfig(layer_ramp=False, scope=False, reconstruction=False)
    assert unsearched.warm_points()[0] == {"metric": "flap_reference", "reducer": "sum", "keep_first": 0, "keep_last": 0,
                                           "num_samples": 2048}
    assert SearchSpaceConfig(warm_start=[]).warm_points() == []


def _score_alone(session, candidate: Candidate) -> float | None:
    """The objective of ``candidate`` scored directly on the session, without the search (None: infeasible)."""
    try:
        selection = session.select(candidate)
    except ConfigError:
        return None
    return session.score(selection, session.compensation(candidate, selection))


def test_the_first_trials_are_the_baselines_and_the_best_is_no_worse():
    """The guarantee, checked against scores computed without the search: the search's first trial is FLAP's
    reference configuration on the whole pool, its score is FLAP's own, and the search returns its best trial, so
    it never ends below FLAP (it fails if the warm trials are skipped or another trial than the best is returned)."""
    config = SearchConfig.of(**{**SMALL, "metrics": ["taylor", "flap_reference", "wanda_sp"], "trials": 5,
                                "max_keep_first": 4, "max_keep_last": 2})
    session = _session()
    result = run_search(session, config, progress=False)
    first, second = result.trials[0].candidate, result.trials[1].candidate
    assert (first["metric"], first["scope"], first["reconstruction"]) == ("flap_reference", "standardized", "bias")
    assert (second["metric"], second["scope"], second["keep_first"], second["keep_last"]) == ("taylor", "layerwise", 4, 2)
    pool = list(range(session.pool.shape[0]))
    flap = _score_alone(session, Candidate(metric="flap_reference", reducer="sum", subset=pool, scope="standardized",
                                           bias_compensation=True))
    assert flap is not None and result.trials[0].status == "ok"
    assert result.trials[0].score == pytest.approx(flap, rel=1e-6, abs=1e-9)
    # (LLM-Pruner's point keeps 6 layers whole: on this 4-layer model it cannot reach the target and fails, both ways)
    llm_pruner = _score_alone(session, Candidate(metric="taylor", reducer="sum", subset=second["subset"], keep_first=4,
                                                 keep_last=2))
    assert llm_pruner is None and result.trials[1].status == "failed"
    scores = [t.score for t in result.trials if t.status == "ok"]
    assert len(set(scores)) > 1, "the trials should differ, or returning another than the best goes unnoticed"
    assert result.best.score == max(scores) >= flap
    assert result.plan.provenance["search"]["trial"] == result.best.trial
    assert result.plan.provenance["metric"] == result.best.candidate["metric"]
    assert result.trials[2].candidate["metric"] in config.space.metrics  # then the usual random initial points


def test_the_baselines_start_with_their_own_sample_counts_and_num_samples_is_searched_up_to_the_pool():
    """FLAP's reference reads 2,048 calibration samples (``main.py --nsamples``), LLM-Pruner's 10: their warm points
    carry those counts, clipped to the pool, and the searched sample count reaches the whole pool."""
    config = SearchConfig.of(**{**SMALL, "metrics": ["taylor", "flap_reference"], "trials": 4, "init_points": 4,
                                "max_keep_first": 4, "max_keep_last": 2})
    assert config.space.vary_num_samples  # the default
    session = _session()
    result = run_search(session, config, progress=False)
    pool = session.pool.shape[0]
    assert sorted(result.trials[0].candidate["subset"]) == list(range(pool))  # FLAP: every sample of the pool
    assert len(result.trials[1].candidate["subset"]) == min(10, pool)           # LLM-Pruner: its 10 samples
    space = SearchSpace.build(config, session.config, session.stats.features())
    assert space.bounds()["num_samples"] == (2, pool, int)
    fixed = SearchConfig.of(**{**SMALL, "vary_num_samples": False})
    assert "num_samples" not in SearchSpace.build(fixed, session.config, session.stats.features()).bounds()
    assert all(k != "num_samples" for p in fixed.space.warm_points() for k in p)


@pytest.mark.parametrize(("point", "match"), [
    ({"metric": "flap_reference"}, r"warm_start metric.*searched space"),
    ({"keep_first": 9}, r"warm_start keep_first"),
    ({"sparsity": 0.5}, r"warm_start key"),
    ({"num_samples": 1}, r"warm_start num_samples"),
])
def test_a_warm_start_point_outside_the_space_is_refused(point, match):
    with pytest.raises(ConfigError, match=match):
        SearchSpaceConfig(metrics=["taylor", "wanda_sp"], warm_start=[point])
