"""The Bayesian search: determinism, resume after a kill, failed trials, space validation."""

from __future__ import annotations

import json
import math
from pathlib import Path
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.errors import ConfigError, SearchFailed
from adapruner_lightning.core.session import PruningSession
from adapruner_lightning.search.runner import run_search
from helpers_core import SMALL
from helpers_core import small_session as _session

@pytest.mark.parametrize("engine", ["gp", "tpe", "random"])
def test_same_seed_same_plan(engine):
    a = run_search(_session(), SearchConfig.of(engine=engine, **SMALL), progress=False)
    b = run_search(_session(), SearchConfig.of(engine=engine, **SMALL), progress=False)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert a.plan.layers == b.plan.layers
    assert a.best.score == max(t.score for t in a.trials if t.status == "ok")
    assert a.plan.provenance["seed"] == 0 and a.plan.provenance["sample_ids"]


def test_resume_from_trace_equals_uninterrupted(tmp_path):
    full = run_search(_session(), SearchConfig.of(**SMALL), trace_path=tmp_path / "full.jsonl", progress=False)
    part = tmp_path / "part.jsonl"
    run_search(_session(), SearchConfig.of(**{**SMALL, "trials": 4}), trace_path=part, progress=False)
    with part.open("a") as fh:  # a kill during a write leaves a torn line
        fh.write('{"type": "trial", "trial": 4, "par')
    resumed = run_search(_session(), SearchConfig.of(**SMALL), trace_path=part, progress=False)
    assert [t.params for t in resumed.trials] == [t.params for t in full.trials]
    assert resumed.plan.layers == full.plan.layers


def test_killed_process_resumes_without_repeating_trials(tmp_path):
    """kill -9 a search process after some trials; the rerun repeats no finished trial."""
    trace = tmp_path / "trace.jsonl"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from helpers_core import SMALL, small_session as _session
        from adapruner_lightning.search.config import SearchConfig
        from adapruner_lightning.search.runner import run_search
        import adapruner_lightning.search.runner as s
        orig = s.evaluate_point
        def slow(*a, **k):
            r = orig(*a, **k); time.sleep(float(sys.argv[1])); return r
        s.evaluate_point = slow
        res = run_search(_session(), SearchConfig.of(**SMALL), trace_path={str(trace)!r}, progress=False)
        print("BEST", res.best.trial, [t.trial for t in res.trials])
    """))
    proc = subprocess.Popen([sys.executable, str(script), "3"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            done = [line for line in trace.read_text().splitlines() if '"type": "trial"' in line] if trace.exists() else []
            if len(done) >= 2:
                break
            proc.poll()
            assert proc.returncode is None, proc.stdout.read().decode()[-2000:]
            import time
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = [json.loads(line)["trial"] for line in trace.read_text().splitlines() if '"type": "trial"' in line]
    assert 2 <= len(finished) < SMALL["trials"]
    out = subprocess.run([sys.executable, str(script), "0"], capture_output=True, text=True, check=True).stdout
    trials = [json.loads(line)["trial"] for line in trace.read_text().splitlines() if '"type": "trial"' in line]
    assert trials == list(range(SMALL["trials"]))  # every trial once: none repeated, none lost
    reference = run_search(_session(), SearchConfig.of(**SMALL), progress=False)
    assert f"BEST {reference.best.trial}" in out


def test_trace_from_another_space_is_refused(tmp_path):
    trace = tmp_path / "t.jsonl"
    run_search(_session(), SearchConfig.of(**{**SMALL, "trials": 2}), trace_path=trace, progress=False)
    with pytest.raises(ConfigError, match="trace"):
        run_search(_session(), SearchConfig.of(**{**SMALL, "trials": 2, "metrics": ["flap"]}), trace_path=trace, progress=False)


def test_nan_trials_are_failed_with_finite_penalty_and_search_continues(monkeypatch):
    session = _session()
    calls = {"n": 0}
    real = session.score

    def flaky(selection, biases=None):
        calls["n"] += 1
        return float("nan") if calls["n"] % 2 == 0 else real(selection, biases)

    monkeypatch.setattr(session, "score", flaky)
    result = run_search(session, SearchConfig.of(**SMALL), progress=False)
    failed = [t for t in result.trials if t.status == "failed"]
    assert len(failed) == 3 and all("nan" in t.error for t in failed)
    assert len(result.trials) == SMALL["trials"] and math.isfinite(result.best.score)


def test_repeated_failures_stop_with_a_summary(monkeypatch):
    session = _session()
    monkeypatch.setattr(session, "score", lambda selection, biases=None: float("inf"))
    with pytest.raises(SearchFailed, match="consecutive trials failed"):
        run_search(session, SearchConfig.of(**{**SMALL, "max_failures": 3}), progress=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(metrics=[]), "metrics"),
    (dict(metrics=["nope"]), "metrics"),
    (dict(reducers=[]), "reducers"),
    (dict(engine="annealing"), "engine"),
    (dict(time_budget_s=0), "time_budget_s"),
])
def test_space_rejects_bad_configs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SearchConfig.of(**kwargs)


def test_subset_encoding_neighbours_overlap():
    from adapruner_lightning.search.space import SearchSpace

    session = _session(num_samples=4)  # the count every candidate reads while the search does not vary it
    space = SearchSpace.build(SearchConfig.of(**SMALL, vary_num_samples=False), session.config, session.stats.features())
    k = 4
    centre = {"u0": 0.5, "u1": 0.5}
    a = set(space.subset(centre))
    b = set(space.subset({"u0": 0.52, "u1": 0.5}))
    far = set(space.subset({"u0": 1.0, "u1": 1.0}))
    assert len(a) == len(b) == len(far) == k
    # the subset is the k pool samples nearest the point in the embedding (computed here without the space)
    distance = (space.embedding - torch.tensor([0.5, 0.5])).square().sum(1)
    assert a == set(distance.argsort()[:k].tolist())
    assert len(a & b) >= k - 1  # a small step keeps all but at most one sample
    assert len(a & far) < len(a & b)  # strictly: a distant point is another subset


def test_copula_transform_keeps_the_ranking_and_bounds_outliers():
    from adapruner_lightning.search.trace import TrialRecord
    from adapruner_lightning.search.engines import optimizer_scores

    scores = [-4.6, -4.5, -13.8, None, -4.55]  # one collapsed candidate (ppl ~1e6) and one failed trial
    trials = [TrialRecord(i, {}, {}, [], s, "ok" if s is not None else "failed", 0.0) for i, s in enumerate(scores)]
    raw = optimizer_scores(trials, penalty=1.0)
    assert raw[3] == -14.8  # failed: below the worst finite score
    warped = optimizer_scores(trials, penalty=1.0, transform="copula")
    assert sorted(range(5), key=raw.__getitem__) == sorted(range(5), key=warped.__getitem__)
    assert max(warped) - min(warped) < 3.0  # the 9-unit outlier gap shrinks to a few standard deviations
    assert (warped[1] - warped[4]) / (max(warped) - min(warped)) > (raw[1] - raw[4]) / (max(raw) - min(raw))


def test_sessions_can_share_pool_statistics_across_metrics_and_seeds() -> None:
    first = _session(seed=0, metric="wanda_sp")
    stats = first.stats
    shared = PruningSession(first.model, PruningConfig(target_ratio=0.2, seed=3, metric="flap", reconstruction="bias"),
                            first.pool, objective_windows=first.objective_windows, progress=False, stats=stats)
    fresh = _session(seed=3, metric="flap", reconstruction="bias")
    assert shared.stats is stats
    a, b = shared.plan(shared.default_candidate()), fresh.plan(fresh.default_candidate())
    assert a.provenance["seed"] == 3 and a.provenance["sample_ids"] == b.provenance["sample_ids"]
    assert [lp.channels_removed for lp in a.layers] == [lp.channels_removed for lp in b.layers]
    assert [lp.down_bias for lp in a.layers] == [lp.down_bias for lp in b.layers]
    with pytest.raises(ConfigError, match="stats"):  # another pool's statistics are refused before any work
        PruningSession(first.model, first.config, first.pool[:6], progress=False, stats=stats)


@pytest.mark.parametrize("change, named", [
    (lambda: _other_model_session(), "model"),
    (lambda: _session(round_to=2), "pruning.round_to"),
    (lambda: _session(seed=1), "pruning.seed"),
    (lambda: _session(pool_seed=7), "pool"),
])
def test_trace_of_another_problem_is_refused_naming_the_difference(tmp_path, change, named):
    """Same space, another problem (model weights, round_to, seed, samples): never resumed, the difference named."""
    trace = tmp_path / "t.jsonl"
    run_search(_session(), SearchConfig.of(**{**SMALL, "trials": 2}), trace_path=trace, progress=False)
    with pytest.raises(ConfigError, match=rf"trace.*{named}"):
        run_search(change(), SearchConfig.of(**{**SMALL, "trials": 3}), trace_path=trace, progress=False)


def _other_model_session():
    session = _session()
    with torch.no_grad():
        session.model.model.layers[0].self_attn.q_proj.weight.mul_(1.5)  # same shapes, other weights
    return session


def test_more_trials_on_the_same_problem_resume(tmp_path):
    trace = tmp_path / "t.jsonl"
    run_search(_session(), SearchConfig.of(**{**SMALL, "trials": 2}), trace_path=trace, progress=False)
    resumed = run_search(_session(), SearchConfig.of(**{**SMALL, "trials": 3}), trace_path=trace, progress=False)
    assert [t.trial for t in resumed.trials] == [0, 1, 2]


def test_the_plan_is_the_selection_that_was_scored(monkeypatch):
    """A re-selection after the search may differ (non-deterministic GPU gradients); the plan must be the scored one."""
    session = _session()
    real, calls, seen = session.select, {"n": 0}, []

    def drifting(candidate):
        calls["n"] += 1
        selection = real(candidate)
        if calls["n"] > SMALL["trials"]:  # any selection made after the trials drifts by one channel
            layer = next(i for i, s in selection.items() if s.channels)
            selection[layer].channels = sorted(set(selection[layer].channels[1:]) | {max(selection[layer].channels) + 1})
        seen.append(selection)
        return selection

    monkeypatch.setattr(session, "select", drifting)
    result = run_search(session, SearchConfig.of(**SMALL), progress=False)
    scored = seen[result.best.trial]
    assert {lp.index: lp.channels_removed for lp in result.plan.layers} == {i: s.channels for i, s in scored.items()}
