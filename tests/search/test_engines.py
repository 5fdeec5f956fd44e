"""The engines: a registry by name (the one choice list of the config and the CLI), and every engine sees the
space's inactive dimensions as fixed: it never proposes a change in an inactive dimension alone."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from adapruner_lightning.errors import ConfigError
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.search.engines import (
    SearchEngine,
    _ENGINES,
    canonical_rows,
    engine_names,
    get_engine,
    register_engine,
)
from adapruner_lightning.search.runner import run_search
from adapruner_lightning.search.space import SearchSpace
from helpers_core import SMALL, small_session

#: a space where every condition bites: data-free and o/down metrics, scopes, bias, subset size up to the pool
CONDITIONAL = {**SMALL, "trials": 9, "metrics": ["taylor_vector", "flap_reference", "magnitude_l2"],
               "reducers": ["sum", "max", "first"]}


@pytest.fixture(scope="module", params=["gp", "tpe", "random"])
def searched(request):
    session = small_session()
    config = SearchConfig.of(engine=request.param, **CONDITIONAL)
    result = run_search(session, config, progress=False)
    return SearchSpace.build(config, session.config, session.stats.features()), result


def test_engines_never_propose_a_change_in_an_inactive_dimension_alone(searched):
    """Every proposal holds its inactive dimensions at their canonical values, so two proposals that agree on their
    active dimensions are the same point; the trace records which dimensions were active."""
    space, result = searched
    proposals = [t for t in result.trials if t.trial >= SMALL["init_points"]]  # the engine's own (and the start)
    assert proposals
    for record in result.trials:
        assert record.params == space.canonical(record.params), record.params
        assert record.active == space.active(record.params)
    for a, b in itertools.combinations(result.trials, 2):
        if {k: a.params[k] for k in a.active} == {k: b.params[k] for k in b.active}:
            assert a.params == b.params
    inactive = {name for t in result.trials for name in set(space.bounds()) - set(t.active)}
    assert inactive, "the search never met a condition: the test exercises nothing"


def test_categorical_dimensions_keep_their_values(searched):
    """bayes_opt reads a list of two numbers as a float range: ``[False, True]`` came back as 0.479 (a bias
    compensation ``bool(0.479)`` = on). Every proposed category is one of its list, with its type."""
    space, result = searched
    for record in result.trials:
        for name, bound in space.bounds().items():
            if isinstance(bound, list):
                assert any(record.params[name] is v or (type(record.params[name]) is type(v) and
                                                        record.params[name] == v) for v in bound), (name, record.params)


@pytest.mark.filterwarnings("ignore:Non-float parameters are experimental")
def test_the_gp_kernel_compares_canonical_points():
    """The GP's input transform fixes inactive dimensions: two rows that differ only in an inactive dimension are
    the same point to the kernel (and the acquisition function), rows differing in an active one are not."""
    from bayes_opt import BayesianOptimization
    from bayes_opt.parameter import CategoricalParameter

    session = small_session()
    space = SearchSpace.build(SearchConfig.of(**CONDITIONAL), session.config, session.stats.features()).dims
    bounds = {n: CategoricalParameter(n, b) if isinstance(b, list) else b for n, b in space.bounds().items()}
    target = BayesianOptimization(f=None, pbounds=bounds, verbose=0).space
    transform = canonical_rows(space, target)
    flap = {"metric": "flap_reference", "scope": "standardized", "reconstruction": "none", "reducer": "sum",
            "num_samples": 5, "u0": 0.2, "u1": 0.7, "keep_first": 1, "keep_last": 0, "layer_ramp": 0.0}
    rows = [target.params_to_array(p) for p in (flap, {**flap, "layer_ramp": 0.9, "reducer": "max"},
                                                 {**flap, "scope": "global", "layer_ramp": 0.9})]
    out = transform(np.stack(rows))
    assert np.array_equal(out[0], out[1]) and not np.array_equal(out[0], out[2])
    for seed in range(20):  # the compiled transform agrees with ConditionalSpace.canonical
        point = {n: target.array_to_params(target.random_sample(1, random_state=seed)[0])[n] for n in space.bounds()}
        expected = target.params_to_array(space.canonical(point))
        assert np.allclose(transform(target.kernel_transform(target.params_to_array(point))), expected)


def test_the_engine_registry_is_the_one_choice_list():
    assert engine_names() == ["gp", "tpe", "random"]
    with pytest.raises(ConfigError, match=r"search\.engine\.name.*'annealing'.*gp"):
        SearchEngine(name="annealing")
    with pytest.raises(ConfigError, match="not registered yet"):
        register_engine("gp", get_engine("random").propose)
    from adapruner_lightning.cli.prune import parse

    assert parse(["--out", "x", "--engine", "tpe"]).search.engine.name == "tpe"


def test_a_registered_engine_runs_a_search_and_is_offered_by_the_cli():
    seen = []

    def corner(space, done, rng, options):  # the lowest value of every active dimension
        seen.append(len(done))
        return space.canonical({n: b[0] for n, b in space.bounds().items()})

    register_engine("corner", corner)
    try:
        from adapruner_lightning.cli.prune import parse

        assert parse(["--out", "x", "--engine", "corner"]).search.engine.name == "corner"
        config = SearchConfig.of(engine="corner", **{**SMALL, "trials": 6, "max_repeats": 4})
        result = run_search(small_session(), config, progress=False)
        # 3 random starts, the corner once, then the corner again and again: registered, not scored, until the
        # space is declared exhausted
        assert seen and result.exhausted and (result.plans_scored, result.trials_saved) == (4, 4)
    finally:
        _ENGINES.pop("corner")


def test_an_engine_needing_a_missing_module_is_refused_with_its_hint():
    register_engine("needs_missing", get_engine("random").propose, requires="no_such_module_35", hint="pip install x")
    try:
        with pytest.raises(ConfigError, match="pip install x"):
            SearchEngine(name="needs_missing")
    finally:
        _ENGINES.pop("needs_missing")
