"""The per-layer allocation stage (search/allocation.py): level switches keep the parameter budget, the stage
never ends worse than its seeds on its fitness, plans carry what it did, runs are seeded, and two gloo ranks
split its evaluations and end with the counts of one process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adapruner_lightning.core.selection import LayerCounts, counts_cost, layer_counts, max_counts
from adapruner_lightning.core.session import Candidate
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.search.allocation import AllocationConfig, Budget, Fitness, refine_allocation
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.search.runner import run_search
from helpers_core import SMALL, small_session
from helpers_dist import rank_results

SCRIPT = Path(__file__).parent / "scripts" / "allocation_ranks.py"


def _budget(session, round_to: int = 1, block_removal: bool = False) -> Budget:
    return Budget(session.layers, session.budget, session.attention_unit, round_to, True, 1 / 32,
                  block_removal=block_removal)


def _counts(session, selection):
    unit = session.attention_unit
    return {i: layer_counts(session.layers[i], selection[i], unit) for i in range(len(session.layers))}


def test_level_switches_keep_the_budget_and_the_bounds():
    session = small_session()
    budget = _budget(session)
    counts = _counts(session, session.select(session.default_candidate()))
    assert budget.feasible(counts)
    rng = np.random.RandomState(0)
    seen = set()
    for _ in range(300):
        child = budget.mutate(counts, rng, 1 + rng.randint(3))
        if child is None:
            continue
        assert budget.feasible(child), child
        assert 0 <= session.budget - counts_cost(session.layers, child, session.attention_unit) < \
            max(budget.block.values())
        seen.add(tuple(sorted(child.items())))
        counts = child
    assert len(seen) > 50  # the walk moves: attention and MLP counts both change
    assert len({c.attention for key in seen for _, c in key}) > 1
    whole = {i: max_counts(layer, session.attention_unit, 1, whole_blocks=True) for i, layer in enumerate(session.layers)}
    assert all(c.attention < whole[i].attention and c.channels < whole[i].channels for key in seen for i, c in key)


def _blocks(session, counts) -> tuple[set[int], set[int]]:
    """The layers whose attention / MLP ``counts`` remove whole."""
    whole = {i: max_counts(layer, session.attention_unit, 1, whole_blocks=True) for i, layer in enumerate(session.layers)}
    return ({i for i, c in counts.items() if c.attention == whole[i].attention},
            {i for i, c in counts.items() if c.channels == whole[i].channels})


@pytest.mark.parametrize("unit", ["kv_group", "query_head"])
def test_block_removal_switches_remove_whole_blocks_on_the_budget_and_only_where_deci_runs_them(unit):
    session = small_session(target_ratio=0.4, attention_unit=unit)
    budget = _budget(session, block_removal=True)
    counts = _counts(session, session.select(session.default_candidate()))
    assert budget.feasible(counts) and _blocks(session, counts) == (set(), set())
    rng = np.random.RandomState(0)
    headless, both = set(), set()
    for _ in range(400):
        child = budget.mutate(counts, rng, 1 + rng.randint(3))
        if child is None:
            continue
        assert budget.feasible(child), child
        assert 0 <= session.budget - counts_cost(session.layers, child, unit) < max(budget.block.values())
        attention, mlp = _blocks(session, child)
        assert mlp <= attention, child  # never an MLP removed where attention is kept (deci would drop the layer)
        assert 3 not in mlp and 0 not in attention, child  # the last layer keeps its MLP, layer 0 its attention
        headless |= attention
        both |= mlp
        counts = child
    assert len(headless) >= 2 and both  # the walk reaches whole attention blocks and layers with neither block


def test_an_infeasible_allocation_is_never_proposed_and_a_block_removal_the_session_cannot_run_is_refused():
    session = small_session(target_ratio=0.4)
    budget = _budget(session, block_removal=True)
    whole = {i: max_counts(layer, "kv_group", 1, whole_blocks=True) for i, layer in enumerate(session.layers)}
    every = {i: LayerCounts(whole[i].attention, 0) for i in whole}  # every layer without attention
    assert not budget.feasible(every) and not budget.feasible({**every, 0: LayerCounts(0, 128)})
    assert budget.fill(every, np.random.RandomState(0)) is None
    budget.budget = 10 * counts_cost(session.layers, whole, "kv_group")  # beyond removing every block
    assert budget.fill({i: LayerCounts() for i in whole}, np.random.RandomState(0)) is None
    candidate = Candidate("wanda_sp", "sum", list(range(6)))
    with pytest.raises(ConfigError, match=r"block_removal=True.*prune_attention=True.*a layer's MLP goes whole only"):
        refine_allocation(small_session(prune_attention=False), candidate, {}, AllocationConfig(generations=1,
                                                                                                  block_removal=True))
    config = SearchConfig.of(**{**SMALL, "trials": 3, "generations": 1, "block_removal": True})
    with pytest.raises(ConfigError, match=r"block_removal=True.*per-layer shapes.*per_layer='uniform'"):
        run_search(small_session(per_layer="uniform"), config, progress=False)


def test_the_stage_with_block_removal_meets_the_budget_and_the_plan_records_the_removed_blocks():
    session = small_session(target_ratio=0.4)
    candidate = Candidate("wanda_sp", "sum", list(range(6)))
    config = AllocationConfig(generations=4, offspring=6, block_removal=True)
    result = refine_allocation(session, candidate, session.select(candidate), config, seed=3)
    counts = {i: LayerCounts(*c) for i, c in enumerate(result.info["counts"])}
    assert result.info["block_removal"] and counts == _counts(session, result.selection)
    attention, mlp = _blocks(session, counts)
    assert result.info["removed_blocks"] == {"attention": sorted(attention), "mlp": sorted(mlp)}
    removed = sum(sel.removed_params(session.layers[i]) for i, sel in result.selection.items())
    assert 0 <= session.budget - removed < max(_budget(session).block.values())
    plan = session.plan(candidate, result.selection, allocation=result.info)
    assert plan.removed_blocks == result.info["removed_blocks"]


def test_the_fill_refuses_a_budget_the_bounds_cannot_reach():
    session = small_session()
    budget = _budget(session)
    budget.budget = 10 * counts_cost(session.layers, budget.maxima, session.attention_unit)  # beyond every layer's all
    start = {i: LayerCounts() for i in range(len(session.layers))}
    assert budget.fill(start, np.random.RandomState(0)) is None
    assert not budget.feasible(budget.maxima)


def test_the_stage_never_ends_worse_than_its_seeds_and_its_selection_meets_the_budget():
    session = small_session()
    candidate = Candidate("wanda_sp", "sum", list(range(6)), reconstruction="bias")
    selection = session.select(candidate)
    result = refine_allocation(session, candidate, selection, AllocationConfig(generations=3, offspring=4), seed=1)
    info = result.info
    assert info["kl"] <= min(info["kl_seeds"].values()) and set(info["kl_seeds"]) == {"search", "flap"}
    assert info["evaluations"]["low"] > 0 and info["evaluations"]["full"] >= 2
    counts = {i: LayerCounts(*c) for i, c in enumerate(info["counts"])}
    assert counts == _counts(session, result.selection)
    removed = sum(sel.removed_params(session.layers[i]) for i, sel in result.selection.items())
    assert 0 <= session.budget - removed < max(_budget(session).block.values())
    fitness = Fitness(session, candidate, session.unit_scores(candidate), 2)
    assert fitness(counts, "full") == pytest.approx(-info["kl"], rel=1e-5)


def test_the_search_runs_the_stage_after_its_trials_and_the_plan_records_it():
    config = SearchConfig.of(**{**SMALL, "trials": 3, "generations": 2, "offspring": 3})
    first = run_search(small_session(), config, progress=False)
    again = run_search(small_session(), config, progress=False)
    assert first.plan.provenance["allocation"]["generations"] == 2
    assert first.plan.to_dict()["layers"] == again.plan.to_dict()["layers"]  # seeded
    off = run_search(small_session(), SearchConfig.of(**{**SMALL, "trials": 3}), progress=False)
    assert "allocation" not in off.plan.provenance


@pytest.mark.parametrize(("options", "match"), [
    ({"survivors": 9}, r"survivors.*\[1, offspring=8\]"),
    ({"mlp_step": 0.0}, r"mlp_step"),
    ({"generations": -1}, r"generations"),
])
def test_bad_allocation_options_are_refused(options, match):
    with pytest.raises(ConfigError, match=match):
        AllocationConfig(**options)
    assert SearchConfig.of(generations=2, offspring=4).allocation.offspring == 4  # flat names


def test_two_ranks_split_the_evaluations_and_end_with_one_process_counts(tmp_path):
    results = rank_results(SCRIPT, tmp_path, "ALLOCATION_OK", 2)
    (one,), (r0, r1) = results[1], results[2]
    assert r0 == r1  # every rank holds the same result
    for result in (r0, one):  # the work done differs (each rank memoises what it scored), the outcome does not
        result["info"].pop("evaluations")
    # the Gram sums of pool and reconstruction windows add the batches in another order on two ranks: the KLs
    # agree to float rounding, the counts and selection exactly
    kls = [(r["info"].pop("kl"), r["info"].pop("kl_seeds")) for r in (r0, one)]
    assert kls[0][0] == pytest.approx(kls[1][0], rel=1e-3)
    assert kls[0][1] == pytest.approx(kls[1][1], rel=1e-3)
    assert r0 == one


def test_least_squares_fits_are_reused_per_layer_and_score_as_fresh_ones():
    """An offspring re-fits only the layers whose counts are new; the cached fits score exactly as the session's."""
    session = small_session()
    candidate = Candidate("wanda_sp", "sum", list(range(6)), reconstruction="lstsq")
    counts = _counts(session, session.select(candidate))
    scores = session.unit_scores(candidate)
    fitness = Fitness(session, candidate, scores, 2)
    budget, rng = _budget(session), np.random.RandomState(4)
    child = next(c for c in (budget.mutate(counts, rng, 1) for _ in range(50)) if c is not None)
    fitness(counts, "full")
    solved = len(fitness.fits)
    fitness(child, "full")
    changed = sum(child[i] != counts[i] for i in counts)
    assert len(fitness.fits) == solved + changed
    fresh = Fitness(session, candidate, scores, 2)
    fresh.compensation = lambda c, selection: session.compensation(candidate, selection)  # every layer solved anew
    assert fitness(child, "full") == pytest.approx(fresh(child, "full"), rel=1e-6)
    fitness.keep_fits(child)
    assert set(fitness.fits) == set(child.items())


def test_the_fit_cache_holds_one_version_of_a_layer_while_offspring_are_scored(monkeypatch):
    """Memory at 8B: when an offspring is scored, the cache holds at most one least-squares fit per layer (the
    parent's); each offspring's own layers are dropped once it is scored, and the seeds are scored one at a time."""
    import collections

    from adapruner_lightning.search import allocation

    held = []
    call = allocation.Fitness.__call__

    def checked(self, counts, fidelity):
        held.append(max(collections.Counter(i for i, _ in self.fits).values(), default=0))
        return call(self, counts, fidelity)

    monkeypatch.setattr(allocation.Fitness, "__call__", checked)
    session = small_session()
    candidate = Candidate("wanda_sp", "sum", list(range(6)), reconstruction="lstsq")
    result = refine_allocation(session, candidate, session.select(candidate),
                               AllocationConfig(generations=3, offspring=4), seed=1)
    assert len(held) > 6 and max(held) <= 1
    assert result.info["evaluations"]["low"] > 0


def test_the_search_time_budget_also_stops_the_stage_from_starting_generations():
    """``search.time_budget_s`` bounds the whole search: once spent, neither a trial nor a generation of the stage
    starts (the stage's seeds are still scored, so the plan is the better of them); without it every generation runs."""
    spent = run_search(small_session(), SearchConfig.of(**{**SMALL, "trials": 3, "generations": 50, "offspring": 3,
                                                             "time_budget_s": 1e-9}), progress=False)
    stage = spent.plan.provenance["allocation"]
    assert len(spent.trials) == 1 and stage["generations_run"] == 0 and stage["stopped"] == "time budget"
    assert stage["evaluations"] == {"low": 0, "full": 2} and stage["improvements"] == 0
    full = run_search(small_session(), SearchConfig.of(**{**SMALL, "trials": 1, "generations": 3, "offspring": 3}),
                      progress=False)
    assert full.plan.provenance["allocation"]["generations_run"] == 3
    assert "stopped" not in full.plan.provenance["allocation"]


def test_two_ranks_stop_the_stage_at_the_same_generation_on_a_time_budget(tmp_path):
    """Rank 0's clock decides when the budget is spent, so both ranks stop after the same generation (a rank
    deciding alone would wait in a collective the other never joins) and end with the same counts."""
    from helpers_dist import launch_ranks

    runs = launch_ranks(SCRIPT, tmp_path, 200, 1.0, world_size=2, timeout=240)
    for rank, run in enumerate(runs):
        assert run.returncode == 0 and f"[rank {rank}] ALLOCATION_OK" in run.stdout, run.stdout[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["info"].pop("evaluations") is not None and r1["info"].pop("evaluations") is not None
    assert r0 == r1 and r0["info"]["generations_run"] < 200 and r0["info"]["stopped"] == "time budget"


def test_the_stage_shows_a_progress_bar_of_its_generations(capsys, monkeypatch):
    monkeypatch.setenv("ADAPRUNER_PROGRESS", "1")
    session = small_session()
    candidate = Candidate("wanda_sp", "sum", list(range(6)), reconstruction="bias")
    refine_allocation(session, candidate, session.select(candidate), AllocationConfig(generations=2, offspring=3),
                      seed=1, progress=True)
    shown = capsys.readouterr()
    assert "allocation" in shown.out + shown.err and "2/2" in shown.out + shown.err and "KL" in shown.out + shown.err


def test_a_stop_request_ends_the_stage_at_a_generation_boundary():
    """A requeue signal during the stage (it runs as long as the search) stops it after the current generation,
    as it stops the search after a round: :class:`SearchInterrupted`, the trace keeping every trial."""
    from adapruner_lightning.errors import SearchInterrupted
    from adapruner_lightning.search.stop import clear_stop, request_stop

    session = small_session()
    candidate = Candidate("wanda_sp", "sum", list(range(6)), reconstruction="bias")
    request_stop("SIGUSR1")
    try:
        with pytest.raises(SearchInterrupted, match=r"SIGUSR1 \(rank 0\) in the allocation stage after 0 generations"):
            refine_allocation(session, candidate, session.select(candidate), AllocationConfig(generations=5), seed=1)
    finally:
        clear_stop()


def test_a_stop_request_on_one_rank_ends_the_stage_on_every_rank(tmp_path):
    from helpers_dist import launch_ranks

    runs = launch_ranks(SCRIPT, tmp_path, 5, "none", 1, world_size=2, timeout=240)
    for rank, run in enumerate(runs):
        assert run.returncode == 0 and f"[rank {rank}] ALLOCATION_INTERRUPTED" in run.stdout, run.stdout[-3000:]
    for r in range(2):
        message = json.loads((tmp_path / f"rank{r}.json").read_text())["interrupted"]
        assert "SIGUSR1 (rank 1) in the allocation stage after 0 generations" in message
