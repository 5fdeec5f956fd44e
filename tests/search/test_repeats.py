"""No plan scored twice: a proposal whose plan (``PruningSession.digest``: the removed units and what the compensation
reads) was already scored is registered with that score at no cost, does not count against ``trials``, and enough
of them in a row stop the search; the counts reach the plan's provenance; a resumed search stays exact."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace

import pytest

from adapruner_lightning.core.session import Candidate
from adapruner_lightning.errors import SearchFailed
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.search.runner import FAIL, SCORE, classify, run_search
from adapruner_lightning.search.trace import TrialRecord
from helpers_core import SMALL, small_session

FLAP = {"metric": "flap_reference", "reducer": "sum", "scope": "standardized", "reconstruction": "bias",
        "keep_first": 0, "keep_last": 0, "layer_ramp": 0.0, "num_samples": 2048}
METRICS = ["taylor_vector", "flap_reference", "magnitude_l2"]

#: two warm-start points that differ only in a dimension that cannot change the plan there
PAIRS = {
    "FLAP's point, then a ramp-only move under standardized": (FLAP, {**FLAP, "layer_ramp": 0.6}),
    "a reducer-only move of an o/down metric": ({**FLAP, "scope": "layerwise"},
                                                {**FLAP, "scope": "layerwise", "reducer": "max"}),
    "another subset size of a data-free metric without bias": (
        {**FLAP, "metric": "magnitude_l2", "scope": "global", "reconstruction": "none", "layer_ramp": 0.2, "num_samples": 3},
        {**FLAP, "metric": "magnitude_l2", "scope": "global", "reconstruction": "none", "layer_ramp": 0.2, "num_samples": 8}),
    "other subset coordinates once num_samples is the pool (drawn at random for each point)": (
        {**FLAP, "reconstruction": "none"}, {**FLAP, "reconstruction": "none"}),
}


def _fingerprinted(session):
    """Wrap ``session.score`` to record a fingerprint of every evaluated plan (units removed and biases)."""
    seen, score = [], session.score

    def wrapped(selection, biases=None):
        removed = [[i, s.heads, s.kv_heads, s.channels] for i, s in sorted(selection.items()) if s.channels or s.heads]
        seen.append(hashlib.sha256(json.dumps([removed, biases], default=str).encode()).hexdigest())
        return score(selection, biases)

    session.score = wrapped
    return seen


@pytest.mark.parametrize("pair", list(PAIRS.values()), ids=list(PAIRS))
def test_an_identical_plan_is_scored_once(pair):
    """Fails on the code before issue 35 (1026af9): there the second warm point re-scores the first one's plan."""
    session = small_session()
    evaluated = _fingerprinted(session)
    config = SearchConfig.of(**{**SMALL, "metrics": METRICS, "trials": 3, "warm_start": list(pair)})
    result = run_search(session, config, progress=False)
    assert len(evaluated) == len(set(evaluated)), "a plan was evaluated twice"
    first, second = result.trials[:2]
    assert second.repeat_of == 0 and second.score == first.score and second.digest == first.digest
    assert (result.plans_scored, result.trials_saved, len(evaluated)) == (3, 1, 3)  # the repeat was free


def test_the_digest_reads_the_subset_only_where_compensation_does():
    session = small_session()
    data_free = Candidate("magnitude_l2", "sum", [0, 1, 2], scope="global")
    other_samples = replace(data_free, subset=[5, 6, 7, 8])
    digest = lambda c: session.digest(c, session.select(c))  # noqa: E731
    assert digest(data_free) == digest(other_samples)
    assert session.compensation_key(data_free) is None
    with_bias = replace(data_free, reconstruction="bias")
    assert digest(with_bias) != digest(replace(with_bias, subset=[5, 6, 7, 8]))  # bias reads the samples' means
    assert digest(with_bias) != digest(data_free)
    assert session.compensation_key(with_bias) == ("bias", [0, 1, 2])
    assert digest(replace(data_free, scope="layerwise")) != digest(data_free)


def test_a_space_with_few_plans_is_exhausted_and_the_counts_reach_the_plan(caplog):
    """Two plans in the space (two reducers of one metric, nothing else searched): both are scored, the next
    proposals repeat them, and ``max_repeats`` of those in a row end the search with the best plan."""
    config = SearchConfig.of(**{**SMALL, "trials": 8, "metrics": ["magnitude_l2"], "reducers": ["sum", "max"],
                                "engine": "random", "search_keep_layers": False, "search_layer_ramp": False,
                                "search_scope": False, "search_reconstruction": False, "max_repeats": 3})
    with caplog.at_level(logging.INFO, logger="adapruner_lightning.search.runner"):
        result = run_search(small_session(), config, progress=False)
    assert result.exhausted and result.plans_scored == 2 and result.trials_saved == 3
    assert [t.repeat_of is not None for t in result.trials[-3:]] == [True] * 3
    search = result.plan.provenance["search"]
    assert (search["plans_scored"], search["trials_saved"], search["exhausted"]) == (2, 3, True)
    assert search["trials"] == len(result.trials) == 5
    assert "2 distinct plans scored in 5 proposals, 3 repeated plans registered at no cost (the space is " \
           "exhausted)" in caplog.text


def test_repeats_do_not_count_as_failures_or_reset_them(monkeypatch):
    """A repeat of a failed plan is registered as failed but is no new failure: ``max_failures`` counts evaluations."""
    session, calls = small_session(), []
    monkeypatch.setattr(session, "score", lambda selection, biases=None: calls.append(1) or float("nan"))
    config = SearchConfig.of(**{**SMALL, "trials": 6, "metrics": METRICS, "max_failures": 3,
                                "warm_start": [FLAP, {**FLAP, "layer_ramp": 0.5}, FLAP]})
    with pytest.raises(SearchFailed, match="3 consecutive trials failed"):
        run_search(session, config, progress=False)
    assert len(calls) == 3  # trials 0, 3 and 4: the repeats 1 and 2 neither counted nor reset the failures


def _record(trial: int, digest: str, repeat_of: int | None = None) -> TrialRecord:
    return TrialRecord(trial, {}, {}, [], -1.0, "ok", 0.0, digest=digest, repeat_of=repeat_of)


def test_a_round_is_classified_in_trial_order_from_digests_alone():
    done = [_record(0, "a"), _record(1, "b"), _record(2, "a", repeat_of=0)]
    drafts = [_record(4, "b"), _record(3, "c"), _record(5, "c"), _record(6, ""), _record(7, "d")]
    verdicts, exhausted = classify(done, drafts, need=3, streak=1, max_repeats=5)
    assert verdicts == {3: SCORE, 4: 1, 5: 3, 6: FAIL, 7: SCORE} and not exhausted
    verdicts, _ = classify(done, drafts, need=1, streak=0, max_repeats=5)
    assert verdicts == {3: SCORE}  # the budget is met at trial 3: a one-rank search would stop there
    verdicts, exhausted = classify(done, drafts, need=3, streak=1, max_repeats=2)
    assert verdicts == {3: SCORE, 4: 1, 5: 3} and exhausted  # trial 3 ends the earlier streak, 4 and 5 make 2
    verdicts, exhausted = classify(done, [_record(4, "b"), _record(3, "a")], need=3, streak=1, max_repeats=2)
    assert verdicts == {3: 0} and exhausted  # the streak of the trace's last trial continues


#: random search over a data-free metric with few plans and an activation metric with many
REPEATS = {**SMALL, "trials": 8, "engine": "random", "metrics": ["magnitude_l2", "flap_reference"],
           "reducers": ["sum", "max"], "search_keep_layers": False, "search_layer_ramp": False,
           "search_reconstruction": False, "max_repeats": 20}


def test_a_search_killed_after_a_repeat_resumes_as_if_uninterrupted(tmp_path):
    """The trace holds the repeats (digest, repeat_of): cut right after one (a kill), the resumed search registers
    the same trials, scores no plan twice and ends with the same plan."""
    full_path = tmp_path / "full.jsonl"
    full = run_search(small_session(), SearchConfig.of(**REPEATS), trace_path=full_path, progress=False)
    lines = full_path.read_text().splitlines()
    first_repeat = next(i for i, line in enumerate(lines) if '"repeat_of": null' not in line and '"trial"' in line)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[:first_repeat + 1]) + "\n" + '{"type": "trial", "trial": 9, "par')
    session = small_session()
    evaluated = _fingerprinted(session)
    resumed = run_search(session, SearchConfig.of(**REPEATS), trace_path=cut, progress=False)
    keys = ("trial", "params", "digest", "repeat_of", "score")
    assert [{k: t[k] for k in keys} for t in resumed.trace()] == [{k: t[k] for k in keys} for t in full.trace()]
    assert resumed.plan.layers == full.plan.layers and resumed.trials_saved == full.trials_saved > 0
    assert len(evaluated) == full.plans_scored - sum(t.repeat_of is None for t in full.trials[:first_repeat])
