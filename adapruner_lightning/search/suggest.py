"""The next points of a search: the warm start, the random start, then the configured engine; a pure function of
(space, finished trials, seed, trial index).

The engine is rebuilt for every trial from the finished trials and a random state derived from (seed, trial
index), so a search resumed from its trace suggests exactly what an uninterrupted one would. :func:`suggest_batch`
proposes several points at once (one per rank) by the constant liar: each proposed but unscored point is
registered with the worst score so far before the next is asked, which pushes the next point away from it
(Ginsbourger et al., 2010, "Kriging is well-suited to parallelize optimization").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from adapruner_lightning.search.engines import get_engine
from adapruner_lightning.search.space import SearchSpace
from adapruner_lightning.search.trace import TrialRecord


def _rng(seed: int, trial: int) -> np.random.RandomState:
    return np.random.RandomState((seed * 1_000_003 + trial * 7919 + 17) % (2**32 - 1))


def suggest(space: SearchSpace, done: list[TrialRecord], trial: int, seed: int) -> dict[str, Any]:
    """The point to evaluate at ``trial`` (every dimension, the inactive ones at their canonical value), a pure
    function of (space, finished trials, seed, trial index)."""
    config, rng = space.config, _rng(seed, trial)
    if trial < len(config.space.warm_points()):  # the baselines' settings (or the user's) first
        return space.warm_point(trial, rng)
    if trial < config.engine.init_points or not done:
        return space.random_point(rng)
    return get_engine(config.engine.name).propose(space.dims, done, rng, config.engine)


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
