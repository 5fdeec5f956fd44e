"""Suggestion engines (gp / tpe / random): the next point is a pure function of (space, finished trials, seed, trial).

The optimiser is rebuilt for every trial from the finished trials and a random state derived from
(seed, trial index), so a search resumed from its trace suggests exactly what an uninterrupted one would.
:func:`suggest_batch` proposes several points at once (one per rank) by the constant liar: each proposed but
unscored point is registered with the worst score so far before the next is asked, which pushes the next
point away from it (Ginsbourger et al., 2010, "Kriging is well-suited to parallelize optimization").
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from adapruner_lightning.search.space import SearchSpace
from adapruner_lightning.search.trace import TrialRecord


def _rng(seed: int, trial: int) -> np.random.RandomState:
    return np.random.RandomState((seed * 1_000_003 + trial * 7919 + 17) % (2**32 - 1))


def _optimizer_scores(trials: list[TrialRecord], penalty: float, transform: str = "none") -> list[float]:
    """Targets registered with the optimiser: failed trials get a finite floor below the worst finite score.

    ``transform="copula"`` replaces each target by the normal quantile of its rank (ties averaged): a few
    collapsed candidates (perplexity 1e4-1e6 next to ~100) otherwise dominate the GP's length scales and
    its fit ignores the differences among good candidates. The ranking, and so the best trial, is unchanged.
    """
    finite = [t.score for t in trials if t.status == "ok"]
    floor = (min(finite) - penalty) if finite else -50.0
    scores = [t.score if t.status == "ok" else floor for t in trials]
    if transform != "copula" or len(scores) < 2:
        return scores
    from scipy.stats import norm, rankdata

    ranks = rankdata(scores, method="average")
    return [float(v) for v in norm.ppf((ranks - 0.5) / len(scores))]


def suggest(space: SearchSpace, done: list[TrialRecord], trial: int, seed: int) -> dict[str, Any]:
    """The point to evaluate at ``trial``, a pure function of (space, finished trials, seed, trial index)."""
    config, rng = space.config, _rng(seed, trial)
    if trial < len(config.space.warm_points()):  # the baselines' settings (or the user's) first
        return space.warm_point(trial, rng)
    if config.engine.name == "random" or trial < config.engine.init_points or not done:
        return space.random_point(rng)
    scores = _optimizer_scores(done, config.engine.failure_penalty, config.engine.score_transform if config.engine.name == "gp" else "none")
    if config.engine.name == "tpe":
        return _suggest_tpe(space, done, scores, int(rng.randint(2**31 - 1)))
    return _suggest_gp(space, done, scores, rng)


def suggest_batch(space: SearchSpace, done: list[TrialRecord], first: int, count: int,
                  seed: int) -> list[dict[str, Any]]:
    """``count`` points for trials ``first .. first + count - 1``, a pure function of its arguments; with
    ``count == 1`` exactly ``[suggest(space, done, first, seed)]``."""
    points: list[dict[str, Any]] = []
    lies: list[TrialRecord] = []
    for offset in range(count):
        points.append(suggest(space, done + lies, first + offset, seed))
        lies.append(_lie(done, first + offset, points[-1]))
    return points


def _lie(done: list[TrialRecord], trial: int, point: dict[str, Any]) -> TrialRecord:
    """A stand-in result for a proposed point: the worst finished score (a failure when none finished)."""
    finite = [t.score for t in done if t.status == "ok"]
    return TrialRecord(trial=trial, params=point, candidate={}, sample_ids=[], score=min(finite) if finite else None,
                       status="ok" if finite else "failed", seconds=0.0)


def _suggest_gp(space: SearchSpace, done: list[TrialRecord], scores: list[float], rng) -> dict[str, Any]:
    from bayes_opt import BayesianOptimization, acquisition

    acq = {"ucb": lambda: acquisition.UpperConfidenceBound(kappa=2.576),
           "ei": lambda: acquisition.ExpectedImprovement(xi=0.01),
           "poi": lambda: acquisition.ProbabilityOfImprovement(xi=0.01)}[space.config.engine.acquisition]()
    with warnings.catch_warnings():  # typed (int/categorical) parameters are flagged experimental upstream
        warnings.filterwarnings("ignore", message="Non-float parameters are experimental")
        opt = BayesianOptimization(f=None, pbounds=space.bounds(), acquisition_function=acq, random_state=rng,
                                   verbose=0, allow_duplicate_points=True)
    for record, score in zip(done, scores):
        opt.register(params=record.params, target=score)
    point = opt.suggest()
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in point.items()}


def _suggest_tpe(space: SearchSpace, done: list[TrialRecord], scores: list[float], seed: int) -> dict[str, Any]:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {}
    for name, bound in space.bounds().items():
        if isinstance(bound, list):
            dists[name] = CategoricalDistribution(bound)
        elif len(bound) == 3:
            dists[name] = IntDistribution(bound[0], bound[1])
        else:
            dists[name] = FloatDistribution(bound[0], bound[1])
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=space.config.engine.init_points)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for record, score in zip(done, scores):
        study.add_trial(optuna.trial.create_trial(params=record.params, distributions=dists, value=score))
    return dict(study.ask(dists).params)
