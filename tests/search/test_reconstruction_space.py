"""The reconstruction as a searched dimension: none | bias | lstsq, FLAP's warm point keeps its bias, the
deprecated bias_compensation switch and warm-start key still work (mapped), a single choice is applied without
a dimension, and a search that may score lstsq computes the pool's Gram matrices before its first trial."""

from __future__ import annotations

import pytest

from adapruner_lightning.errors import ConfigError
from adapruner_lightning.search.config import SearchConfig, SearchSpaceConfig
from adapruner_lightning.search.runner import run_search
from adapruner_lightning.search.space import SearchSpace
from helpers_core import SMALL, small_session


def _space(config: SearchConfig, session) -> SearchSpace:
    return SearchSpace.build(config, session.config, session.stats.features())


def test_the_default_space_searches_every_reconstruction_and_flap_starts_with_its_bias_then_lstsq():
    space = SearchSpaceConfig()
    assert space.dimensions()["reconstruction"].bound == ["none", "bias", "lstsq"]
    flap, llm_pruner, flap_lstsq, obs_lstsq = space.warm_points()
    assert (flap["metric"], flap["reconstruction"]) == ("flap_reference", "bias")
    assert (llm_pruner["metric"], llm_pruner["reconstruction"]) == ("taylor", "none")
    assert {**flap, "reconstruction": "lstsq"} == flap_lstsq  # FLAP's selection with the least-squares floor
    assert {**flap_lstsq, "metric": "obs"} == obs_lstsq  # the repair-aware selection, in FLAP's structure
    assert len(SearchSpaceConfig(reconstructions=["none", "bias"]).warm_points()) == 2  # obs's point needs lstsq
    assert len(SearchSpaceConfig(reconstruction=False).warm_points()) == 3  # the two FLAP points merge
    session = small_session()
    decoded = _space(SearchConfig(space=space), session).candidate({"u0": 0.5, "u1": 0.5, "reconstruction": "lstsq"})
    assert decoded.reconstruction == "lstsq" and decoded.describe()["reconstruction"] == "lstsq"


def test_the_deprecated_switch_and_warm_start_key_map_onto_reconstruction():
    with pytest.warns(DeprecationWarning, match="bias_compensation is deprecated"):
        old = SearchSpaceConfig(bias_compensation=True)
    assert old.dimensions()["reconstruction"].bound == ["none", "bias"] and old.bias_compensation is None
    with pytest.warns(DeprecationWarning):
        off = SearchConfig.of(search_bias_compensation=False)
    assert "reconstruction" not in off.space.dimensions()
    session = small_session(reconstruction="bias")
    assert _space(off, session).candidate({"u0": 0.1, "u1": 0.1}).reconstruction == "bias"  # PruningConfig's
    point = {"metric": "flap", "bias_compensation": True}
    with pytest.warns(DeprecationWarning, match="warm-start key"):
        mapped = SearchSpaceConfig(metrics=["flap", "wanda_sp"], warm_start=[point])
    assert mapped.warm_points() == [{"reconstruction": "bias", "metric": "flap"}]
    assert point == {"metric": "flap", "bias_compensation": True}  # the user's dict is not changed


def test_one_reconstruction_is_applied_without_a_dimension():
    config = SearchConfig.of(reconstructions=["lstsq"])
    session = small_session()
    space = _space(config, session)
    assert "reconstruction" not in space.bounds()
    assert space.candidate(space.random_point(__import__("numpy").random.RandomState(0))).reconstruction == "lstsq"


@pytest.mark.parametrize(("options", "match"), [
    ({"reconstructions": ["ols"]}, r"reconstructions\[\]='ols'.*'bias', 'lstsq', 'none'"),
    ({"reconstructions": []}, r"reconstructions.*non-empty"),
    ({"warm_start": [{"reconstruction": "obs"}]}, r"warm_start reconstruction.*searched space"),
])
def test_bad_reconstruction_options_are_refused(options, match):
    with pytest.raises(ConfigError, match=match):
        SearchSpaceConfig(**options)


def test_a_search_that_may_score_lstsq_fits_its_statistics_first_and_its_plan_refits_the_weights():
    session = small_session()
    config = SearchConfig.of(**{**SMALL, "trials": 3, "init_points": 3, "warm_start": [], "reconstructions": ["lstsq"]})
    result = run_search(session, config, progress=False)
    assert session._grams is not None
    assert all(t.candidate["reconstruction"] == "lstsq" for t in result.trials)
    assert result.plan.refits_weights and result.plan.provenance["reconstruction_fit"]["damping"] > 0
    assert result.refit is not None  # what apply_plan needs, as find_plan's result carries it
    without = small_session()
    run_search(without, SearchConfig.of(**{**SMALL, "trials": 2, "reconstructions": ["none", "bias"]}), progress=False)
    assert without._grams is None  # no Gram pass when lstsq cannot be scored
