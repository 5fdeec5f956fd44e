"""Suggestion engines, a registry by name (gp / tpe / random): an engine proposes the next point of a
:class:`~adapruner_lightning.search.dimensions.ConditionalSpace` from the finished trials and a random state.

An engine is a pure function of its arguments (the runner rebuilds it for every trial, so a search resumed from its
trace suggests exactly what an uninterrupted one would) and sees the space's inactive dimensions as fixed: the GP's
kernel compares canonical points (each inactive dimension at its canonical value, for the finished trials and for
the points its acquisition function weighs), TPE asks for a dimension only where it is active (optuna's conditional
parameters), random search does not draw it. Register another engine with :func:`register_engine`::

    from adapruner_lightning.search.engines import register_engine
    register_engine("my_engine", lambda space, done, rng, options: space.random_point(rng))
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from adapruner_lightning.config import check_choice, check_literal, check_non_negative, check_positive
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.search.dimensions import ConditionalSpace, Test
from adapruner_lightning.search.trace import TrialRecord

#: ``propose(space, done, rng, options) -> point``: the next point (every dimension of ``space``) from the finished
#: trials ``done`` (their ``params`` complete points), a random state and the :class:`SearchEngine` options
Propose = Callable[[ConditionalSpace, list[TrialRecord], np.random.RandomState, "SearchEngine"], dict[str, Any]]


@dataclass(frozen=True)
class EngineSpec:
    """A registered engine: its name, how it proposes, and the module it needs (checked when it is configured)."""

    name: str
    propose: Propose
    requires: str | None = None
    hint: str = ""


_ENGINES: dict[str, EngineSpec] = {}


def register_engine(name: str, propose: Propose, *, requires: str | None = None, hint: str = "") -> EngineSpec:
    """Register ``propose`` as engine ``name`` (duplicates refused); ``requires`` names a module it imports, whose
    absence :class:`SearchEngine` reports with ``hint`` before any work."""
    if name in _ENGINES:
        raise ConfigError("engine name", name, "a name not registered yet")
    _ENGINES[name] = EngineSpec(name, propose, requires, hint)
    return _ENGINES[name]


def get_engine(name: str) -> EngineSpec:
    """The registered engine ``name`` or a :class:`ConfigError` listing the names."""
    check_choice("search.engine.name", name, _ENGINES)
    return _ENGINES[name]


def engine_names() -> list[str]:
    """All registered engine names (the one choice list of ``search.engine.name`` and ``--engine``)."""
    return list(_ENGINES)


#: the GP's acquisition functions and its score transforms (each choice list written once, as these types)
Acquisition = Literal["ucb", "ei", "poi"]
ScoreTransform = Literal["copula", "none"]


@dataclass
class SearchEngine:
    """How points are proposed, and when a search stops early.

    Args:
        name: a registered engine (:func:`engine_names`): ``"gp"`` (bayesian-optimization's Gaussian process),
            ``"tpe"`` (optuna, the paper's BO-TPE, extra ``[tpe]``) or ``"random"``.
        init_points: random candidates before the optimiser takes over.
        acquisition: ``"ucb"``, ``"ei"`` or ``"poi"`` (gp).
        score_transform: ``"copula"`` (default: the GP sees normal quantiles of the scores' ranks, robust
            to collapsed candidates with huge perplexity) or ``"none"`` (raw negative log perplexity).
        failure_penalty: a failed (NaN/inf/OOM) trial is registered this far below the worst finite score.
        max_failures: consecutive failed trials that stop the search with a summary.
        max_repeats: consecutive proposals whose plan was already scored (registered with its score at no cost,
            not counted against ``trials``) that stop the search: the space is exhausted.
    """

    name: str = "gp"
    init_points: int = 5
    acquisition: Acquisition = "ei"
    score_transform: ScoreTransform = "copula"
    failure_penalty: float = 1.0
    max_failures: int = 5
    max_repeats: int = 10

    def __post_init__(self) -> None:
        spec = get_engine(self.name)
        check_non_negative("search.engine.init_points", self.init_points)
        check_literal("search.engine.acquisition", self.acquisition, Acquisition)
        check_literal("search.engine.score_transform", self.score_transform, ScoreTransform)
        check_positive("search.engine.max_failures", self.max_failures)
        check_positive("search.engine.max_repeats", self.max_repeats)
        if spec.requires:
            try:
                importlib.import_module(spec.requires)
            except ImportError as exc:
                raise ConfigError("search.engine.name", self.name, f"an installed {spec.requires}",
                                  hint=spec.hint or f"pip install {spec.requires}") from exc


def optimizer_scores(trials: list[TrialRecord], penalty: float, transform: str = "none") -> list[float]:
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


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _random(space: ConditionalSpace, done: list[TrialRecord], rng: np.random.RandomState,
            options: SearchEngine) -> dict[str, Any]:
    """Random search: each active dimension drawn uniformly (an inactive one is not drawn)."""
    return space.random_point(rng)


def _gp(space: ConditionalSpace, done: list[TrialRecord], rng: np.random.RandomState,
        options: SearchEngine) -> dict[str, Any]:
    """bayesian-optimization's GP (Matern 5/2) on canonical points, maximising the configured acquisition. Every
    category list is passed as a ``CategoricalParameter`` (bayes_opt reads a list of two numbers, ``[False, True]``
    included, as a float range)."""
    from bayes_opt import BayesianOptimization, acquisition
    from bayes_opt.parameter import CategoricalParameter, wrap_kernel
    from sklearn.gaussian_process.kernels import Matern

    acq = {"ucb": lambda: acquisition.UpperConfidenceBound(kappa=2.576),
           "ei": lambda: acquisition.ExpectedImprovement(xi=0.01),
           "poi": lambda: acquisition.ProbabilityOfImprovement(xi=0.01)}[options.acquisition]()
    bounds = {name: CategoricalParameter(name, bound) if isinstance(bound, list) else bound  # [False, True] too
              for name, bound in space.bounds().items()}
    with warnings.catch_warnings():  # typed (int/categorical) parameters are flagged experimental upstream
        warnings.filterwarnings("ignore", message="Non-float parameters are experimental")
        opt = BayesianOptimization(f=None, pbounds=bounds, acquisition_function=acq, random_state=rng,
                                   verbose=0, allow_duplicate_points=True)
    opt.set_gp_params(kernel=wrap_kernel(Matern(nu=2.5), transform=canonical_rows(space, opt.space)))
    for record, score in zip(done, optimizer_scores(done, options.failure_penalty, options.score_transform)):
        opt.register(params=space.canonical(record.params), target=score)
    return space.canonical({k: _plain(v) for k, v in opt.suggest().items()})


def canonical_rows(space: ConditionalSpace, target: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A kernel input transform for bayes_opt's ``TargetSpace`` ``target``: each row (a point in its array layout,
    categories one-hot, integers rounded) with the inactive dimensions set to their canonical encoding, so that the
    GP, and the acquisition function maximised over it, are constant along a dimension where it is inactive.

    The conditions are compiled once into array tests (the acquisition is maximised over tens of thousands of
    single rows); the dimensions are fixed in order, so a later condition reads an earlier inactive dimension's
    canonical value, as :meth:`ConditionalSpace.canonical` does."""
    masks, base = target.masks, target.params_to_array(space.canonical({}))
    steps = [(masks[name], [[_compiled(test, space, masks) for test in clause] for clause in dim.when.clauses])
             for name, dim in space.dims.items() if dim.when is not None]

    memo: dict[bytes, np.ndarray] = {}  # the training rows come back with every prediction

    def transform(x: np.ndarray) -> np.ndarray:
        x = np.array(np.atleast_2d(x), dtype=float)
        key = x.tobytes() if len(x) > 1 else b""
        if key in memo:
            return memo[key].copy()
        for mask, clauses in steps:
            active = np.zeros(len(x), dtype=bool)
            for clause in clauses:
                holds = np.ones(len(x), dtype=bool)
                for test in clause:
                    holds &= test(x)
                active |= holds
            x[np.ix_(~active, mask)] = base[mask]
        if key:
            memo.clear()
            memo[key] = x.copy()
        return x

    return transform


def _compiled(test: Test, space: ConditionalSpace, masks: dict[str, np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """``test`` on rows of bayes_opt's array layout (a fixed value's test is a constant)."""
    if test.dim not in space.dims:
        constant = bool(test.holds(space.fixed[test.dim]))
        return lambda x: np.full(len(x), constant)
    columns, bound = np.flatnonzero(masks[test.dim]), space.dims[test.dim].bound
    if isinstance(bound, list):  # one-hot: the row's category is one of the allowed ones
        hot = columns[[i for i, value in enumerate(bound) if bool(test.holds(value))]]
        return lambda x: x[:, hot].sum(1) > 0.5
    return lambda x: test.holds(x[:, columns[0]])


def _tpe(space: ConditionalSpace, done: list[TrialRecord], rng: np.random.RandomState,
         options: SearchEngine) -> dict[str, Any]:
    """optuna's TPE: a trial holds only its active dimensions (optuna's conditional parameters, sampled in the
    table's order, so a condition reads values already drawn)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {name: CategoricalDistribution(bound) if isinstance(bound, list) else
             IntDistribution(bound[0], bound[1]) if len(bound) == 3 else FloatDistribution(bound[0], bound[1])
             for name, bound in space.bounds().items()}
    sampler = optuna.samplers.TPESampler(seed=int(rng.randint(2**31 - 1)), n_startup_trials=options.init_points)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for record, score in zip(done, optimizer_scores(done, options.failure_penalty)):
        params = space.canonical(record.params)
        active = space.active(params)
        study.add_trial(optuna.trial.create_trial(params={k: params[k] for k in active},
                                                  distributions={k: dists[k] for k in active}, value=score))
    trial = study.ask()
    drawn: dict[str, Any] = {}
    for name, bound in space.bounds().items():
        if name in space.active(drawn):  # the dimensions before ``name`` are drawn or inactive
            drawn[name] = (trial.suggest_categorical(name, bound) if isinstance(bound, list) else
                           trial.suggest_int(name, bound[0], bound[1]) if len(bound) == 3 else
                           trial.suggest_float(name, bound[0], bound[1]))
    return space.canonical({k: _plain(v) for k, v in drawn.items()})


register_engine("gp", _gp)
register_engine("tpe", _tpe, requires="optuna", hint="pip install 'adapruner-lightning[tpe]'")
register_engine("random", _random)
