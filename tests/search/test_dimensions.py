"""The conditional search space: each dimension's condition is checked against what selection and importance read
(a dimension declared inactive cannot change the plan; where it is declared active it can), and the
ConditionalSpace completes points, draws only active dimensions and refuses a table whose conditions look ahead."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from adapruner_lightning.core.importance import MEMBERS, ScoreInputs, get_metric, metric_names, reads_reducer
from adapruner_lightning.core.reconstruction import Fits
from adapruner_lightning.core.session import Candidate
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.search.dimensions import Below, ConditionalSpace, Dimension, where
from adapruner_lightning.search.space import SearchSpace
from helpers_core import SMALL, small_session

POOL = 12  # small_session's pool


def _plan(session, candidate: Candidate):
    """What a masked evaluation of ``candidate`` depends on: the removed units and the compensation biases."""
    selection = session.select(candidate)
    compensation = session.compensation(candidate, selection)
    if isinstance(compensation, Fits):  # least squares: the fitted matrices, as plain numbers
        compensation = {i: {m: (f.kept.tolist(), f.matrix.tolist(), f.offset.tolist()) for m, f in parts.items()}
                        for i, parts in compensation.fits.items()}
    return {i: (s.heads, s.kv_heads, s.channels) for i, s in selection.items()}, compensation


BASE = Candidate("taylor_vector", "sum", [0, 1, 2, 3], 0, 0, 0.5, None, "layerwise", "none")

#: (what the table claims, a candidate, a change of the claimed-dead dimension alone)
DEAD = [
    ("layer_ramp under standardized", replace(BASE, scope="standardized"), dict(layer_ramp=-0.8)),
    ("reducer under standardized", replace(BASE, scope="standardized"), dict(reducer="max")),
    ("reducer of an o/down metric (wanda_sp), layerwise", replace(BASE, metric="wanda_sp"), dict(reducer="max")),
    ("reducer of an o/down metric (flap_reference), global", replace(BASE, metric="flap_reference", scope="global"),
     dict(reducer="first")),
    ("subset of a data-free metric without bias", replace(BASE, metric="magnitude_l2"), dict(subset=[5, 6, 7, 8, 9])),
    ("subset of random scores without bias", replace(BASE, metric="random"), dict(subset=[7, 8])),
]

#: (where the table says the dimension is active, a candidate, a change of it alone that changes the plan)
LIVE = [
    ("layer_ramp under layerwise", BASE, dict(layer_ramp=-0.8)),
    ("layer_ramp under global", replace(BASE, scope="global"), dict(layer_ramp=-0.8)),
    ("reducer of a metric scoring every member, layerwise", BASE, dict(reducer="max")),
    ("subset of an activation metric", BASE, dict(subset=[5, 6, 7, 8, 9])),
    ("subset of a data-free metric with bias compensation", replace(BASE, metric="magnitude_l2",
                                                                    reconstruction="bias"), dict(subset=[5, 6, 7, 8, 9])),
]


@pytest.fixture(scope="module")
def session():
    return small_session()


@pytest.mark.parametrize("claim, candidate, change", DEAD, ids=[d[0] for d in DEAD])
def test_a_dimension_declared_inactive_leaves_the_plan_unchanged(session, claim, candidate, change):
    """Runs on the code before issue 35 too (only Candidate, select and compensation): the claims hold there."""
    assert _plan(session, candidate) == _plan(session, replace(candidate, **change)), claim


@pytest.mark.parametrize("claim, candidate, change", LIVE, ids=[d[0] for d in LIVE])
def test_where_a_dimension_is_declared_active_it_can_change_the_plan(session, claim, candidate, change):
    assert _plan(session, candidate) != _plan(session, replace(candidate, **change)), claim


def test_attn_share_is_inactive_when_attention_is_not_pruned():
    no_attention = small_session(prune_attention=False)
    for scope in ("layerwise", "global", "standardized"):
        candidate = replace(BASE, metric="wanda_sp", scope=scope, attn_share=0.1)
        assert _plan(no_attention, candidate) == _plan(no_attention, replace(candidate, attn_share=0.5))
    space = SearchSpace.build(SearchConfig.of(**{**SMALL, "search_attn_share": True}), no_attention.config,
                              no_attention.stats.features())
    assert "attn_share" not in space.active({})


def test_metric_member_declarations_match_what_the_metrics_score(session):
    """``reads_reducer`` trusts each metric's declared members: every registered metric returns None for exactly
    the members it does not declare."""
    stats = session.stats.reduce([0, 1, 2])
    for name in metric_names():
        spec = get_metric(name)
        grads = session._gradient_scores([0, 1, 2], spec)[0] if spec.needs == "gradients" else {}
        inputs = ScoreInputs(layer=session.layers[0], activation_stats=stats[0], gradient_stats=grads,
                             generator=torch.Generator().manual_seed(0), grams=session.grams.layers[0],
                             gram_tokens=session.grams.tokens)
        assert {m for m, t in spec.fn(inputs).items() if t is not None} == set(spec.members), name
    assert not reads_reducer("wanda_sp") and not reads_reducer("flap") and not reads_reducer("flap_reference")
    assert reads_reducer("taylor") and reads_reducer("magnitude_l2") and get_metric("taylor").members == MEMBERS


def test_the_subset_coordinates_choose_nothing_once_k_is_the_pool(session):
    space = SearchSpace.build(SearchConfig.of(**SMALL), session.config, session.stats.features())
    rng = np.random.RandomState(0)
    for _ in range(10):
        assert space.subset({"num_samples": POOL, "u0": rng.rand(), "u1": rng.rand()}) == list(range(POOL))
    assert "u0" not in space.active({"metric": "taylor_vector", "num_samples": POOL})
    assert "u0" in space.active({"metric": "taylor_vector", "num_samples": POOL - 1})


def test_random_points_with_their_inactive_dimensions_fixed_give_the_same_plan(session):
    """The whole table at once: a point drawn with every dimension random, and the same point canonical (its inactive
    dimensions fixed), decode to the same plan."""
    config = SearchConfig.of(**{**SMALL, "metrics": ["taylor_vector", "wanda_sp", "flap_reference", "magnitude_l2",
                                                     "random"]})
    space = SearchSpace.build(config, session.config, session.stats.features())
    rng = np.random.RandomState(0)
    inactive_seen = set()
    for _ in range(40):
        raw = {name: _draw(bound, rng) for name, bound in space.bounds().items()}
        canonical = space.canonical(raw)
        inactive_seen |= set(space.bounds()) - set(space.active(raw))
        assert _plan(session, space.candidate(raw)) == _plan(session, space.candidate(canonical)), raw
    assert {"layer_ramp", "reducer", "num_samples", "u0", "u1"} <= inactive_seen  # every condition was exercised


def _draw(bound, rng):
    if isinstance(bound, list):
        return bound[rng.randint(len(bound))]
    if len(bound) == 3:
        return int(rng.randint(bound[0], bound[1] + 1))
    return float(rng.uniform(bound[0], bound[1]))


def test_the_default_table_says_where_each_dimension_matters():
    features = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    space = SearchSpace.build(SearchConfig(), small_session().config, features)
    conditions = space.describe()["conditions"]
    assert conditions["layer_ramp"] == "scope in [layerwise, global]"
    assert conditions["reducer"] == "scope in [layerwise, global] and metric in [taylor, taylor_vector, magnitude_l2]"
    assert conditions["num_samples"] == ("metric in [taylor, taylor_vector, wanda_sp, flap, flap_reference] or "
                               "reconstruction in [bias]")
    assert conditions["u0"].endswith("and num_samples < 64") and "keep_first" not in conditions and "metric" not in conditions
    flap = space.canonical({"metric": "flap_reference", "scope": "standardized", "reconstruction": "bias",
                            "reducer": "max", "num_samples": 64, "u0": 0.1, "u1": 0.9, "layer_ramp": 0.7})
    assert space.active(flap) == ["metric", "scope", "reconstruction", "num_samples", "keep_first", "keep_last"]
    assert (flap["reducer"], flap["u0"], flap["u1"], flap["layer_ramp"]) == ("sum", 0.5, 0.5, 0.0)


def test_random_points_do_not_draw_inactive_dimensions():
    """Random search draws nothing for a dimension where it is inactive: the draws of the active dimensions are
    those of a space without it."""
    table = {"scope": Dimension(["layerwise", "standardized"], "layerwise"),
             "layer_ramp": Dimension((-1.0, 1.0), 0.0, where(scope=("layerwise",))),
             "keep_first": Dimension((0, 3, int), 0)}
    space = ConditionalSpace(table)
    points = [space.random_point(np.random.RandomState(s)) for s in range(20)]
    standardized = [p for p in points if p["scope"] == "standardized"]
    assert standardized and all(p["layer_ramp"] == 0.0 for p in standardized)
    for seed, point in enumerate(points):
        rng = np.random.RandomState(seed)
        rng.randint(2)  # scope
        if point["scope"] == "layerwise":
            assert point["layer_ramp"] == rng.uniform(-1.0, 1.0)
        assert point["keep_first"] == rng.randint(0, 4)


def test_a_single_choice_is_fixed_and_conditions_read_it():
    space = ConditionalSpace({"metric": Dimension(["wanda_sp"], "wanda_sp"),
                              "k": Dimension((2, 12, int), 12, where(metric=("taylor",)))}, fixed={})
    assert space.bounds() == {"k": (2, 12, int)} and space.fixed == {"metric": "wanda_sp"}
    assert space.active({"k": 3}) == [] and space.canonical({"k": 3}) == {"k": 12}
    assert space.values({})["metric"] == "wanda_sp"


def test_a_condition_that_reads_a_later_or_unknown_dimension_is_a_table_defect():
    with pytest.raises(ValueError, match="layer_ramp reads \\['scope'\\]"):
        ConditionalSpace({"layer_ramp": Dimension((-1.0, 1.0), 0.0, where(scope=("layerwise",))),
                          "scope": Dimension(["layerwise", "global"], "layerwise")})
    assert where(k=Below(64)).describe() == "k < 64"
    both = (where(metric=("a",)) | where(bias=(True,))) & where(k=Below(8))
    assert both.describe() == "metric in [a] and k < 8 or bias in [True] and k < 8"
    assert bool(both.holds({"metric": "b", "bias": True, "k": 3})) and not bool(both.holds({"metric": "a", "bias": False, "k": 9}))
