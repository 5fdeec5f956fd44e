"""The Bayesian search over the pruning solution space (AdaPruner), knowing nothing of Lightning.

Each trial: suggest a point -> decode it into a Candidate -> importance from cached statistics -> select
groups for the budget -> reversible masks -> objective on held-apart windows -> register. Only the best
candidate is physically pruned, by the caller.

Determinism and resume: the optimiser is rebuilt for every trial from the finished trials and a random
state derived from (seed, trial index), so a search resumed from its JSONL trace suggests exactly what an
uninterrupted one would. Each finished trial is appended (and fsync'ed) to the trace at once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adapruner_lightning.config import SearchConfig
from adapruner_lightning.errors import ConfigError, SearchFailed
from adapruner_lightning.plan import PruningPlan
from adapruner_lightning.progress import make_progress, progress_enabled
from adapruner_lightning.pruner import PruningSession
from adapruner_lightning.space import SearchSpace

log = logging.getLogger(__name__)


@dataclass
class TrialRecord:
    """One finished trial, as written to the trace."""

    trial: int
    params: dict[str, Any]
    candidate: dict[str, Any]
    sample_ids: list[str]
    score: float | None
    status: str  # "ok" or "failed"
    seconds: float
    error: str = ""

    def to_json(self) -> str:
        """One JSONL line."""
        return json.dumps({"type": "trial", **asdict(self)})


@dataclass
class SearchResult:
    """The search's outcome: every trial, the best one, and its plan."""

    trials: list[TrialRecord]
    best: TrialRecord
    plan: PruningPlan
    signature: str
    seconds: float
    stats_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def trace(self) -> list[dict[str, Any]]:
        """The trials as plain data."""
        return [asdict(t) for t in self.trials]


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
    if config.engine == "random" or trial < config.init_points or not done:
        return space.random_point(rng)
    scores = _optimizer_scores(done, config.failure_penalty, config.score_transform if config.engine == "gp" else "none")
    if config.engine == "tpe":
        return _suggest_tpe(space, done, scores, int(rng.randint(2**31 - 1)))
    return _suggest_gp(space, done, scores, rng)


def _suggest_gp(space: SearchSpace, done: list[TrialRecord], scores: list[float], rng) -> dict[str, Any]:
    from bayes_opt import BayesianOptimization, acquisition

    acq = {"ucb": lambda: acquisition.UpperConfidenceBound(kappa=2.576),
           "ei": lambda: acquisition.ExpectedImprovement(xi=0.01),
           "poi": lambda: acquisition.ProbabilityOfImprovement(xi=0.01)}[space.config.acquisition]()
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
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=space.config.init_points)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for record, score in zip(done, scores):
        study.add_trial(optuna.trial.create_trial(params=record.params, distributions=dists, value=score))
    return dict(study.ask(dists).params)


def read_trace(path: Path, signature: str) -> list[TrialRecord]:
    """Finished trials of a previous run of the same space (a torn last line, from a kill, is ignored)."""
    if not path.exists():
        return []
    records: list[TrialRecord] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            log.warning("trace %s: ignoring unreadable line %d (interrupted write)", path, number)
            continue
        if data.get("type") == "header" and data.get("signature") != signature:
            raise ConfigError("trace_path", str(path), f"a trace of this search space (signature {signature})",
                              hint="it was written by a different search; delete it or pass another trace_path")
        if data.get("type") == "trial":
            data.pop("type")
            records.append(TrialRecord(**data))
    return records


def _append(path: Path | None, line: str) -> None:
    if path is None:
        return
    with path.open("a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def evaluate_point(session: PruningSession, space: SearchSpace, point: dict[str, Any], trial: int) -> TrialRecord:
    """Score one point under masks; NaN/inf, OOM and infeasible schedules become failed records."""
    start = time.perf_counter()
    candidate = space.candidate(point)
    score, status, error = None, "ok", ""
    try:
        selection = session.select(candidate)
        value = session.objective(selection, session.compensation(candidate, selection))
        if not math.isfinite(value):
            status, error = "failed", f"objective is {value}"
        else:
            score = value
    except ConfigError as exc:  # e.g. budget unreachable with this many layers kept whole
        status, error = "failed", str(exc)
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
        if not _is_oom(exc):
            raise
        status, error = "failed", f"out of memory: {exc}"
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return TrialRecord(trial=trial, params=point, candidate=candidate.describe(),
                       sample_ids=[session.pool_ids[i] for i in candidate.subset], score=score, status=status,
                       seconds=time.perf_counter() - start, error=error)


def run_search(session: PruningSession, config: SearchConfig, *, seed: int | None = None,
               trace_path: str | Path | None = None, progress: bool = True) -> SearchResult:
    """Search the solution space of ``session`` and return the best plan (the model is left unpruned)."""
    seed = session.config.seed if seed is None else seed
    if session.uniform and (config.search_keep_layers or config.search_layer_ramp or config.search_scope):
        log.info("uniform pruning (per_layer='uniform' or the model family requires it): the layer schedule is not searched")
        config = replace(config, search_keep_layers=False, search_layer_ramp=False, search_scope=False)
    t0 = time.perf_counter()
    features = session.stats.features()
    stats_seconds = time.perf_counter() - t0
    space = SearchSpace.build(config, session.config, features)
    signature = space.signature()
    path = Path(trace_path or config.trace_path) if (trace_path or config.trace_path) else None
    done = read_trace(path, signature) if path else []
    if path and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _append(path, json.dumps({"type": "header", "signature": signature, "seed": seed}))
    if done:
        log.info("resuming search from %s: %d finished trials", path, len(done))
    _run_trials(session, space, config, done, seed, path, progress)
    ok = [t for t in done if t.status == "ok"]
    if not ok:
        raise SearchFailed(f"all {len(done)} trials failed; last error: {done[-1].error if done else 'no trial ran'}")
    best = max(ok, key=lambda t: (t.score, -t.trial))
    candidate = space.candidate(best.params)
    plan = session.plan(candidate, search={"engine": config.engine, "trial": best.trial, "score": best.score,
                                           "trials": len(done), "signature": signature})
    return SearchResult(trials=done, best=best, plan=plan, signature=signature,
                        seconds=time.perf_counter() - t0, stats_seconds=stats_seconds)


def _run_trials(session, space, config, done, seed, path, progress) -> None:
    start, failures = time.perf_counter(), 0
    show = progress_enabled(progress)
    with make_progress() as bar:
        task = bar.add_task("search", total=config.trials, completed=len(done), info="", visible=show)
        for trial in range(len(done), config.trials):
            if config.time_budget_s is not None and time.perf_counter() - start > config.time_budget_s:
                log.info("search time budget reached after %d trials", trial)
                break
            record = evaluate_point(session, space, suggest(space, done, trial, seed), trial)
            done.append(record)
            _append(path, record.to_json())
            failures = failures + 1 if record.status == "failed" else 0
            best = max((t.score for t in done if t.status == "ok"), default=float("nan"))
            bar.update(task, advance=1, info=f"best -log ppl {best:.4f} (ppl {math.exp(-best):.2f})")
            if failures >= config.max_failures:
                errors = "; ".join(sorted({t.error[:120] for t in done[-failures:]}))
                raise SearchFailed(f"{failures} consecutive trials failed ({errors}). Fix the cause or raise max_failures.")
