"""The search starts from the published baselines' settings (warm start): FLAP's reference configuration and
LLM-Pruner's default are its first trials whenever they lie in the space, so its best objective is never worse
than theirs; explicit points are checked against the space."""

from __future__ import annotations

import pytest

from adapruner_lightning.errors import ConfigError
from adapruner_lightning.search.config import BASELINE_POINTS, SearchConfig, SearchSpaceConfig
from adapruner_lightning.search.runner import run_search
from helpers_core import SMALL
from helpers_core import small_session as _session


def test_default_warm_start_is_the_baselines_that_fit_the_space():
    wide = SearchSpaceConfig()
    assert wide.warm_points() == [dict(p) for p in BASELINE_POINTS]
    narrow = SearchSpaceConfig(metrics=["taylor", "wanda_sp"], max_keep_first=1)  # FLAP's metric absent, keep 4 too many
    assert narrow.warm_points() == []
    unsearched = SearchSpaceConfig(layer_ramp=False, scope=False, bias_compensation=False)
    assert unsearched.warm_points()[0] == {"metric": "flap_reference", "reducer": "sum", "keep_first": 0, "keep_last": 0}
    assert SearchSpaceConfig(warm_start=[]).warm_points() == []


def test_the_first_trials_are_the_baselines_and_the_best_is_no_worse():
    config = SearchConfig.of(**{**SMALL, "metrics": ["taylor", "flap_reference", "wanda_sp"], "trials": 5,
                                "max_keep_first": 4, "max_keep_last": 2})
    result = run_search(_session(), config, progress=False)
    first, second = result.trials[0].candidate, result.trials[1].candidate
    assert (first["metric"], first["scope"], first["bias_compensation"]) == ("flap_reference", "standardized", True)
    assert (second["metric"], second["scope"], second["keep_first"], second["keep_last"]) == ("taylor", "layerwise", 4, 2)
    # (LLM-Pruner's point keeps 6 layers whole: on this 4-layer model it cannot reach the target and fails)
    assert result.best.score >= max(t.score for t in result.trials[:2] if t.status == "ok")
    assert result.trials[2].candidate["metric"] in config.space.metrics  # then the usual random initial points


@pytest.mark.parametrize(("point", "match"), [
    ({"metric": "flap_reference"}, r"warm_start metric.*searched space"),
    ({"keep_first": 9}, r"warm_start keep_first"),
    ({"sparsity": 0.5}, r"warm_start key"),
])
def test_a_warm_start_point_outside_the_space_is_refused(point, match):
    with pytest.raises(ConfigError, match=match):
        SearchSpaceConfig(metrics=["taylor", "wanda_sp"], warm_start=[point])
