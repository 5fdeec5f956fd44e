"""The search on several ranks (gloo, CPU): each rank scores its own trials, every rank ends with the same trace
and plan, the statistics pass is split exactly, a failure on one rank stops all, and a run killed between rounds
resumes as if uninterrupted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.search.suggest import suggest, suggest_batch
from adapruner_lightning.search.runner import run_search
from adapruner_lightning.search.space import SearchSpace
from adapruner_lightning.search.trace import TrialRecord
from helpers_core import SMALL, small_session
from helpers_dist import launch_ranks

SCRIPT = Path(__file__).parent / "scripts" / "search_ranks.py"
TIMEOUT_S = 240


def _search(out: Path, trials: int, world_size: int, mode: str = "ok") -> list[dict]:
    results = launch_ranks(SCRIPT, out, trials, mode, world_size=world_size, timeout=TIMEOUT_S)
    if mode == "fail":
        return [r.returncode for r in results]
    for rank, result in enumerate(results):
        assert result.returncode == 0 and f"[rank {rank}] SEARCH_OK" in result.stdout, result.stdout[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world_size)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The same 2-rank search twice, and a 1-rank search, of SMALL's 6 trials."""
    runs = {name: tmp_path_factory.mktemp(name) for name in ("a", "b", "single")}
    return {name: (_search(out, SMALL["trials"], 1 if name == "single" else 2), out) for name, out in runs.items()}


def test_both_ranks_score_trials_and_end_with_one_trace_and_plan(two_ranks):
    (r0, r1), out = two_ranks["a"]
    assert [t["rank"] for t in r0["trace"]] == [0, 1, 0, 1, 0, 1]
    assert [t["trial"] for t in r0["trace"]] == list(range(6))
    assert r0["trace"] == r1["trace"] and r0["plan"] == r1["plan"]
    assert r0["plan"]["provenance"]["search"]["world_size"] == 2
    lines = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]
    assert [line["type"] for line in lines] == ["header"] + ["trial"] * 6  # written once, by rank 0
    assert [line["trial"] for line in lines[1:]] == list(range(6))
    best = max((t for t in r0["trace"] if t["status"] == "ok"), key=lambda t: (t["score"], -t["trial"]))
    assert r0["plan"]["provenance"]["search"]["trial"] == best["trial"]


def test_same_seed_and_world_size_same_plan(two_ranks):
    (a, _), _ = two_ranks["a"]
    (b, _), _ = two_ranks["b"]
    assert [t["params"] for t in a["trace"]] == [t["params"] for t in b["trace"]]
    assert [t["score"] for t in a["trace"]] == [t["score"] for t in b["trace"]]
    assert a["plan"] == b["plan"]


def test_the_random_start_is_the_same_on_one_rank_and_two(two_ranks):
    """The first init_points trials are the seeded random points of their trial index, whoever scores them."""
    (two, _), _ = two_ranks["a"]
    (one,), _ = two_ranks["single"]
    init = SMALL["init_points"]
    assert [t["params"] for t in two["trace"][:init]] == [t["params"] for t in one["trace"][:init]]
    assert [t["score"] for t in two["trace"][:init]] == [t["score"] for t in one["trace"][:init]]


def test_split_statistics_pass_equals_one_process(two_ranks):
    stats = [torch.load(two_ranks["a"][1] / f"stats{r}.pt") for r in (0, 1)]
    single = torch.load(two_ranks["single"][1] / "stats0.pt")
    for layer0, layer1, reference in zip(*stats, single):
        assert set(layer0) == set(layer1) == set(reference)
        for key in reference:
            assert torch.equal(layer0[key], reference[key]) and torch.equal(layer1[key], reference[key]), key
            assert reference[key].abs().sum(1).gt(0).all(), key  # every sample's row was filled


def test_split_least_squares_statistics_equal_one_process(two_ranks):
    """The least-squares Gram pass (run by every rank before the trials, since a least-squares trial may fall to
    any rank) is split between the ranks and summed: the same sums as one process, up to summation order."""
    (two, _), _ = two_ranks["a"]
    assert any(t["candidate"]["reconstruction"] == "lstsq" and t["status"] == "ok" for t in two["trace"])
    grams = [torch.load(two_ranks["a"][1] / f"grams{r}.pt") for r in (0, 1)]
    single = torch.load(two_ranks["single"][1] / "grams0.pt")
    for layer0, layer1, reference in zip(*grams, single):
        for key in reference:
            assert torch.equal(layer0[key], layer1[key]), key
            assert torch.allclose(layer0[key], reference[key], rtol=1e-5, atol=1e-4), key


def test_a_run_stopped_midway_through_a_round_resumes_as_if_uninterrupted(tmp_path, two_ranks):
    """3 trials on 2 ranks (the second round half done), then the full 6 on the same trace."""
    (full, _), _ = two_ranks["a"]
    _search(tmp_path, 3, 2)
    first = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()][1:]
    assert [t["rank"] for t in first] == [0, 1, 0]
    resumed, _ = _search(tmp_path, SMALL["trials"], 2)
    assert [t["params"] for t in resumed["trace"]] == [t["params"] for t in full["trace"]]
    assert [t["rank"] for t in resumed["trace"]] == [0, 1, 0, 1, 0, 1]  # trial 3 is rank 1's in either run
    assert resumed["plan"]["layers"] == full["plan"]["layers"]


def test_a_trial_failing_on_one_rank_stops_every_rank_with_its_message(tmp_path):
    codes = _search(tmp_path, SMALL["trials"], 2, mode="fail")
    assert codes == [1, 1]
    for rank in (0, 1):
        assert (tmp_path / f"error{rank}.txt").read_text() == \
            "SearchFailed: adapruner: the search failed on rank 1: RuntimeError: boom on rank 1"


def test_repeated_plans_are_decided_alike_on_one_rank_and_two(tmp_path):
    """Every rank classifies each round from the gathered digests in trial order, so where the proposals do not
    depend on the rank count (random search), neither do which trials are scored, which are registered as repeats
    of which, the distinct plans and the plan."""
    (one,) = _search(tmp_path / "one", 8, 1, mode="repeats")
    two = _search(tmp_path / "two", 8, 2, mode="repeats")
    assert two[0]["trace"] == two[1]["trace"] and two[0]["plan"] == two[1]["plan"]
    keys = ("trial", "params", "digest", "repeat_of", "score", "status", "active")
    same = lambda trace: [{k: t[k] for k in keys} for t in trace]  # noqa: E731 - not the rank or the seconds
    assert same(one["trace"]) == same(two[0]["trace"])
    assert one["plan"]["layers"] == two[0]["plan"]["layers"]
    repeats = [t for t in one["trace"] if t["repeat_of"] is not None]
    assert repeats, "no proposal repeated a plan: the test exercises nothing"
    distinct = {t["digest"] for t in one["trace"] if t["repeat_of"] is None}
    assert len(distinct) == 8 and {t["digest"] for t in two[0]["trace"]} == distinct
    assert {t["rank"] for t in two[0]["trace"] if t["repeat_of"] is not None} <= {0, 1}


def test_one_point_batches_are_the_sequential_suggestions():
    session = small_session()
    config = SearchConfig.of(**SMALL)
    space = SearchSpace.build(config, session.config, session.stats.features())
    done = run_search(session, config, progress=False).trials[:4]
    for trial in (1, 4):
        assert suggest_batch(space, done[:trial], trial, 1, 0) == [suggest(space, done[:trial], trial, 0)]
    batch = suggest_batch(space, done, 4, 3, 0)
    assert batch[0] == suggest(space, done, 4, 0)
    worst = min(t.score for t in done if t.status == "ok")  # the constant liar: pending points scored the worst
    lie = TrialRecord(trial=4, params=batch[0], candidate={}, sample_ids=[], score=worst, status="ok", seconds=0.0)
    assert batch[1] == suggest(space, done + [lie], 5, 0)
    assert len({json.dumps(p, sort_keys=True) for p in batch}) == 3
