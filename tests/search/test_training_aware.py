"""The training-aware selection stage (search/training_aware.py): it ranks the search's best distinct plans by
their objective score after a few training steps on the pool, keeps the best, leaves the dense model untouched,
records what it did in the plan, and two gloo ranks split the plans and end with one process's choice."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.physical import apply_plan
from adapruner_lightning.core.session import PruningSession
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.search.runner import run_search
from adapruner_lightning.search.space import SearchSpace
from adapruner_lightning.search.trace import TrialRecord
from adapruner_lightning.search.training_aware import (
    TrainingAwareConfig,
    score_after_training,
    top_plans,
)
from helpers_core import SMALL, make_tiny_model, small_session
from helpers_dist import rank_results

SCRIPT = Path(__file__).parent / "scripts" / "training_aware_ranks.py"


def _trial(trial: int, score: float | None, digest: str, status: str = "ok", repeat_of: int | None = None):
    return TrialRecord(trial=trial, params={}, candidate={}, sample_ids=[], score=score, status=status, seconds=0.0,
                       digest=digest, repeat_of=repeat_of)


def test_top_plans_are_the_best_distinct_scored_plans():
    trials = [_trial(0, -3.0, "a"), _trial(1, -1.0, "b"), _trial(2, -1.0, "b", repeat_of=1),
              _trial(3, -1.0, "c"), _trial(4, None, "", status="failed"), _trial(5, -2.0, "b"), _trial(6, -0.5, "d")]
    assert [t.trial for t in top_plans(trials, 3)] == [6, 1, 3]  # 5 has b's plan; ties go to the earlier trial
    assert [t.trial for t in top_plans(trials, 10)] == [6, 1, 3, 0]


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _patterned_session() -> PruningSession:
    """A tiny Llama whose pool and objective windows repeat one short token cycle: a few steps on the pool lower
    the objective perplexity of any plan."""
    cycle = torch.tensor([5, 17, 3, 99, 42, 8, 64, 23])
    pool = torch.stack([cycle.roll(i).repeat(2) for i in range(12)])
    objective = torch.stack([cycle.roll(i).repeat(4) for i in range(3)])
    return PruningSession(make_tiny_model("llama", vocab_size=128, layers=4), PruningConfig(target_ratio=0.2), pool,
                          objective_windows=objective, progress=False)


def test_a_plan_is_scored_after_training_on_a_copy_and_the_dense_model_is_untouched():
    session = _patterned_session()
    candidate = session.default_candidate()
    plan = session.plan(candidate)
    dense = _weights(session.model)
    config = TrainingAwareConfig(candidates=2, steps=3, lr=1e-2)
    trained = score_after_training(session, plan, config, seed=0)
    assert all(torch.equal(dense[k], v) for k, v in session.model.state_dict().items())
    untrained = session.score(session.select(candidate), session.compensation(candidate, session.select(candidate)))
    assert trained > untrained + 0.5  # the steps train: the objective's perplexity drops by over 40%
    assert score_after_training(session, plan, config, seed=0) == pytest.approx(trained, abs=1e-6)  # seeded


def test_score_model_of_the_physically_pruned_copy_is_the_masked_score():
    session = small_session(reconstruction="lstsq")
    candidate = session.default_candidate()
    selection = session.select(candidate)
    plan = session.plan(candidate, selection)
    pruned = apply_plan(copy.deepcopy(session.model), plan, refit=session.least_squares)
    assert session.score_model(pruned) == pytest.approx(session.score(selection, session.compensation(candidate, selection)),
                                                        abs=1e-4)


def test_the_search_keeps_the_plan_best_after_training_and_records_the_stage():
    config = SearchConfig.of(**{**SMALL, "trials": 4, "train_candidates": 3, "train_steps": 2, "train_lr": 1e-2})
    session = small_session()
    result = run_search(session, config, progress=False)
    stage = result.plan.provenance["training_aware"]
    assert stage["candidates"] == 3 and len(stage["trials"]) == len(stage["after"]) >= 2
    assert stage["chose"] == stage["trials"][max(range(len(stage["after"])), key=lambda i: stage["after"][i])]
    assert result.best.trial == stage["chose"]
    assert stage["trials"] == [t.trial for t in top_plans(result.trials, 3)]
    from adapruner_lightning.outputs.tables import search_lines  # the report says what the stage kept

    assert (f"- training-aware stage: the {len(stage['trials'])} best plans trained 2 steps each; kept trial "
            f"{stage['chose']}") in search_lines(result.summary())  # the plans it trained, not the option
    space = SearchSpace.build(config, session.config, session.stats.features())
    by_trial = {t.trial: t for t in result.trials}
    for trial, after in zip(stage["trials"], stage["after"]):  # each score is that trial's plan trained again
        plan = session.plan(space.candidate(by_trial[trial].params))
        assert score_after_training(session, plan, config.training_aware, seed=0) == pytest.approx(after, abs=1e-6)
    chosen = session.plan(space.candidate(by_trial[stage["chose"]].params))
    assert result.plan.to_dict()["layers"] == chosen.to_dict()["layers"]
    off = run_search(small_session(), SearchConfig.of(**{**SMALL, "trials": 4}), progress=False)
    assert "training_aware" not in off.plan.provenance


@pytest.mark.parametrize(("options", "match"), [
    ({"candidates": 1}, r"candidates.*at least 2"),
    ({"candidates": -1}, r"candidates"),
    ({"steps": 0}, r"steps"),
    ({"lr": 0.0}, r"lr"),
    ({"batch_size": 0}, r"batch_size"),
])
def test_bad_training_aware_options_are_refused(options, match):
    with pytest.raises(ConfigError, match=match):
        TrainingAwareConfig(**options)
    assert SearchConfig.of(train_candidates=4, train_steps=5).training_aware.steps == 5  # flat names


def test_two_ranks_split_the_plans_and_end_with_one_process_choice(tmp_path):
    results = rank_results(SCRIPT, tmp_path, "TRAINING_AWARE_OK")
    (one,), (r0, r1) = results[1], results[2]
    assert r0 == r1 and r0["stage"]["trials"] == one["stage"]["trials"] and r0["layers"] == one["layers"]
    assert r0["stage"]["after"] == pytest.approx(one["stage"]["after"], abs=1e-5)


def test_a_bf16_model_trains_in_bf16_and_stays_untouched():
    """The stage on a bf16 model (how 7-8B models are searched): the trained copy lowers the objective, the
    user's model keeps its dtype and its weights bit for bit."""
    session = _patterned_session()
    session.model.to(torch.bfloat16)
    candidate = session.default_candidate()
    plan = session.plan(candidate)
    dense = _weights(session.model)
    trained = score_after_training(session, plan, TrainingAwareConfig(candidates=2, steps=3, lr=1e-2), seed=0)
    assert {p.dtype for p in session.model.parameters()} == {torch.bfloat16}
    assert all(torch.equal(dense[k], v) for k, v in session.model.state_dict().items())
    untrained = session.score(session.select(candidate), session.compensation(candidate, session.select(candidate)))
    assert torch.isfinite(torch.tensor(trained)) and trained > untrained + 0.5
