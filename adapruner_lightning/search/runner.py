"""The Bayesian search over the pruning solution space (AdaPruner), knowing nothing of Lightning.

Each trial: suggest a point -> decode it into a Candidate -> importance from cached statistics -> select
groups for the budget -> reversible masks -> objective on held-apart windows -> register. Only the best
candidate is physically pruned, by the caller. Each finished trial is appended to the trace at once.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from adapruner_lightning.core.plan import PruningPlan
from adapruner_lightning.core.session import PruningSession
from adapruner_lightning.distributed import LOCAL, Collective, attempt
from adapruner_lightning.errors import ConfigError, SearchFailed
from adapruner_lightning.progress import make_progress, progress_enabled
from adapruner_lightning.search.allocation import refine_allocation
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.search.engines import suggest_batch
from adapruner_lightning.search.space import SearchSpace
from adapruner_lightning.search.trace import TrialRecord, _append, read_trace, write_header
from adapruner_lightning.search.trace import signature as trace_signature

log = logging.getLogger(__name__)


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
        return [t.plain() for t in self.trials]


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def evaluate_point(session: PruningSession, space: SearchSpace, point: dict[str, Any], trial: int,
                   rank: int = 0) -> TrialRecord:
    """Score one point under masks; NaN/inf, OOM and infeasible schedules become failed records.

    The record's ``selection`` (not written to the trace) is the selection that was scored: the plan is built
    from it, never from a re-selection (GPU gradients are not bit-deterministic)."""
    start = time.perf_counter()
    candidate = space.candidate(point)
    score, status, error, selection, out_of_memory = None, "ok", "", None, False
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
        status, error, out_of_memory = "failed", f"out of memory: {exc}", True
    if out_of_memory:
        session.free_memory()  # after the except block: the traceback no longer pins the trial's tensors
    record = TrialRecord(trial=trial, params=point, candidate=candidate.describe(),
                         sample_ids=[session.pool_ids[i] for i in candidate.subset], score=score, status=status,
                         seconds=time.perf_counter() - start, error=error, rank=rank)
    record.selection = selection if status == "ok" else None
    return record


def run_search(session: PruningSession, config: SearchConfig, *, seed: int | None = None,
               trace_path: str | Path | None = None, progress: bool = True,
               collective: Collective = LOCAL) -> SearchResult:
    """Search the solution space of ``session`` and return the best plan (the model is left unpruned).

    With a ``collective`` of several ranks (each holding the same model and data), every rank scores its own
    point of each round of ``world_size`` proposals (:func:`suggest_batch`); the records are gathered, so every
    rank keeps the same trace, and the plan is built by the rank that scored the best trial and broadcast. Rank
    0 reads and writes the trace. Same seed and world size, same plan; one rank behaves as before.
    """
    seed = session.config.seed if seed is None else seed
    if session.uniform and (config.space.keep_layers or config.space.layer_ramp or config.space.scope):
        log.info("uniform pruning (per_layer='uniform' or the model family requires it): the layer schedule is not searched")
        config = replace(config, space=replace(config.space, keep_layers=False, layer_ramp=False, scope=False))
    t0 = time.perf_counter()
    features = session.stats.features()
    if "lstsq" in (config.space.reconstructions if config.space.reconstruction else [session.config.reconstruction]):
        session.grams  # every rank together, before any rank scores a trial alone
    stats_seconds = time.perf_counter() - t0
    space = SearchSpace.build(config, session.config, features)
    session.set_objective(config.data.objective, config.data.kl_top_k)
    objective = {"kind": config.data.objective, **({"top_k": config.data.kl_top_k} if config.data.objective == "kl" else {})}
    problem = {**session.problem(), "space": space.describe(), "engine": asdict(config.engine), "seed": seed,
               **({"search_objective": objective} if config.data.objective != "perplexity" else {})}
    path = Path(trace_path or config.trace_path) if (trace_path or config.trace_path) else None
    done = collective.run_on(0, lambda: _open_trace(path, problem))
    fresh = _run_trials(session, space, config, done, seed, path, progress, collective)
    ok = [t for t in done if t.status == "ok"]
    if not ok:
        raise SearchFailed(f"all {len(done)} trials failed; last error: {done[-1].error if done else 'no trial ran'}")
    best = max(ok, key=lambda t: (t.score, -t.trial))
    signature = trace_signature(problem)
    provenance = {"engine": config.engine.name, "trial": best.trial, "score": best.score, "trials": len(done),
                  "signature": signature, "world_size": collective.world_size, "objective": objective}
    owner = best.rank if best.trial in fresh else 0  # the scored selection lives on the rank that scored it
    candidate, chosen, extra = space.candidate(best.params), best.selection, {}
    if config.allocation.generations and not session.uniform:  # then where to cut, with the best's scoring
        seed_selection = collective.run_on(owner, lambda: chosen if chosen is not None else session.select(candidate))
        refined = refine_allocation(session, candidate, seed_selection, config.allocation, seed=seed,
                                    collective=collective)
        chosen, owner, extra["allocation"] = refined.selection, 0, refined.info
    plan = collective.run_on(owner, lambda: session.plan(candidate, chosen, search=provenance, **extra))
    return SearchResult(trials=done, best=best, plan=plan, signature=signature,
                        seconds=time.perf_counter() - t0, stats_seconds=stats_seconds, extra=extra)


def _open_trace(path: Path | None, problem: dict[str, Any]) -> list[TrialRecord]:
    """The finished trials of this problem's trace at ``path`` (a new trace is started when there is none)."""
    done = read_trace(path, problem) if path else []
    if path and not path.exists():
        write_header(path, problem)
    if done:
        log.info("resuming search from %s: %d finished trials", path, len(done))
    return done


def _run_trials(session, space, config, done, seed, path, progress, collective: Collective) -> set[int]:
    """Score rounds of ``world_size`` points (one per rank) until ``config.trials``; returns the trials scored
    here. Every rank leaves each round with the same records, so each decision (stop, fail) is the same."""
    start, failures, elapsed, fresh = time.perf_counter(), 0, 0.0, set()
    width, rank = collective.world_size, collective.rank
    with make_progress() as bar:
        task = bar.add_task("search", total=config.trials, completed=len(done), info="",
                            visible=progress_enabled(progress) and collective.is_zero)
        while len(done) < config.trials:
            if config.time_budget_s is not None and elapsed > config.time_budget_s:
                log.info("search time budget reached after %d trials", len(done))
                break
            first = len(done) - len(done) % width  # a round resumed midway is proposed as it was first
            point = suggest_batch(space, done[:first], first, width, seed)[rank]
            mine = first + rank
            envelope = _score(session, space, point, mine, collective) if len(done) <= mine < config.trials else \
                {"ok": True, "value": None}
            own = envelope.get("value")
            envelope = {**envelope, "value": replace(own, selection=None) if own else None,
                        "elapsed": time.perf_counter() - start}
            gathered = collective.all_gather(envelope)
            collective.raise_if_failed(gathered)
            elapsed = max(e["elapsed"] for e in gathered)
            records = [own if e["value"].rank == rank else e["value"] for e in gathered if e["value"] is not None]
            for record in sorted(records, key=lambda r: r.trial):
                failures = _register(done, record, path if collective.is_zero else None, failures, config)
                fresh.add(record.trial)
            best = max((t.score for t in done if t.status == "ok"), default=float("nan"))
            info = (f"best KL {-best:.4f}" if session.objective_kind == "kl"
                    else f"best -log ppl {best:.4f} (ppl {math.exp(-best):.2f})")
            bar.update(task, completed=len(done), info=info)
    return fresh


def _score(session, space, point, trial: int, collective: Collective) -> dict[str, Any]:
    """This rank's trial as an envelope; in a single process an unexpected error propagates as it is."""
    if collective.world_size == 1:
        return {"ok": True, "value": evaluate_point(session, space, point, trial)}
    return attempt(lambda: evaluate_point(session, space, point, trial, rank=collective.rank), collective.rank)


def _register(done: list[TrialRecord], record: TrialRecord, path: Path | None, failures: int,
              config: SearchConfig) -> int:
    """Append ``record`` (to the trace too, when ``path``); returns the consecutive failures, raising at the limit."""
    _keep_best_selection(done, record)
    done.append(record)
    _append(path, record.to_json())
    failures = failures + 1 if record.status == "failed" else 0
    if failures >= config.engine.max_failures:
        errors = "; ".join(sorted({t.error[:120] for t in done[-failures:]}))
        raise SearchFailed(f"{failures} consecutive trials failed ({errors}). Fix the cause or raise max_failures.")
    return failures


def _keep_best_selection(done: list[TrialRecord], record: TrialRecord) -> None:
    """Only the best trial so far keeps its (weight-independent but large: per-layer index lists) selection;
    records scored on other ranks count too (they hold no selection here)."""
    if record.selection is None:
        return
    if any(t.status == "ok" and (t.score, -t.trial) >= (record.score, -record.trial) for t in done):
        record.selection = None
        return
    for t in done:
        t.selection = None
