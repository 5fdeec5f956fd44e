"""The Bayesian search over the pruning solution space (AdaPruner), knowing nothing of Lightning.

Each trial: suggest a point -> decode it into a Candidate -> importance from cached statistics -> select
groups for the budget -> digest the plan -> (a new plan only) reversible masks -> objective on held-apart windows
-> register. A proposal whose plan was already scored (same digest: ``PruningSession.digest``) is registered with
the earlier score at no cost and does not count against ``trials``; ``engine.max_repeats`` of them in a row stop
the search (the space is exhausted). Only the best candidate is physically pruned, by the caller. Each finished
trial is appended to the trace at once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from adapruner_lightning.core.plan import PruningPlan
from adapruner_lightning.core.reconstruction import LeastSquares
from adapruner_lightning.core.session import Candidate, PruningSession
from adapruner_lightning.distributed import LOCAL, Collective, attempt
from adapruner_lightning.errors import ConfigError, SearchFailed
from adapruner_lightning.progress import make_progress, progress_enabled
from adapruner_lightning.search.allocation import check_block_removal, refine_allocation
from adapruner_lightning.search.training_aware import select_after_training, top_plans
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.search.space import SearchSpace
from adapruner_lightning.search.stop import raise_if_stopped, stop_reason
from adapruner_lightning.search.suggest import suggest_batch
from adapruner_lightning.search.trace import TrialRecord, _append, open_trace, trace_writer
from adapruner_lightning.search.trace import signature as trace_signature

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    """How a plan was found: every trial, the best one, and its plan (no trial and no best when the configured
    candidate was taken without a search, ``SearchConfig(trials=0)``).

    ``exhausted``: the search stopped because ``engine.max_repeats`` proposals in a row repeated plans already
    scored. ``flap_seconds``: FLAP's own prune time on the same machine (:func:`flap_prune_seconds`), the yardstick
    of ``seconds``. ``refit``: for a plan that re-fits the kept weights (``reconstruction='lstsq'``), the least-squares
    statistics to apply it with (``apply_plan(model, result.plan, refit=result.refit)``); None otherwise."""

    trials: list[TrialRecord]
    best: TrialRecord | None
    plan: PruningPlan
    signature: str
    seconds: float
    stats_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    exhausted: bool = False
    refit: LeastSquares | None = None
    flap_seconds: float | None = None

    @property
    def plans_scored(self) -> int:
        """Distinct plans whose objective was evaluated."""
        return distinct_plans(self.trials)

    @property
    def trials_saved(self) -> int:
        """Proposals that repeated a scored plan, registered with its score instead of evaluated again."""
        return sum(t.repeat_of is not None for t in self.trials)

    def trace(self) -> list[dict[str, Any]]:
        """The trials as plain data."""
        return [t.plain() for t in self.trials]

    def summary(self) -> dict[str, Any]:
        """What a person reads of the search: trials (failed ones), the best trial and its score, what it chose
        (metric, reducer, samples, schedule, reconstruction), what the stages after it did (``stages``: the
        allocation stage's generations and KL, the training-aware stage's pick) and the wall time."""
        chosen = {k: v for k, v in self.plan.provenance.items()
                  if k in ("metric", "reducer", "scope", "keep_first", "keep_last", "layer_ramp", "attn_share",
                           "reconstruction")}
        chosen["samples"] = len(self.plan.provenance.get("subset", []))
        stages = {name: {k: v for k, v in info.items() if k != "counts"} for name, info in self.extra.items()
                  if name in ("allocation", "training_aware")}
        return {"stages": stages, "trials": len(self.trials), "failed": sum(t.status != "ok" for t in self.trials),
                "plans_scored": self.plans_scored, "trials_saved": self.trials_saved, "exhausted": self.exhausted,
                "best_trial": None if self.best is None else self.best.trial,
                "best_score": None if self.best is None else self.best.score,
                "objective": self.plan.provenance.get("search", {}).get("objective", {}).get("kind"),
                "chose": chosen, "seconds": self.seconds, "flap_seconds": self.flap_seconds}


def distinct_plans(trials: list[TrialRecord]) -> int:
    """Distinct plans whose objective was evaluated among ``trials``."""
    return sum(t.repeat_of is None and bool(t.digest) for t in trials)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _guarded(session: PruningSession, record: TrialRecord, step: Callable[[], None]) -> None:
    """Run one step of a trial: an infeasible candidate (ConfigError: e.g. the budget unreachable with this many
    layers kept whole) or an out-of-memory error fails ``record`` instead of the search."""
    out_of_memory = False
    try:
        step()
    except ConfigError as exc:
        record.status, record.error = "failed", str(exc)
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
        if not _is_oom(exc):
            raise
        record.status, record.error, out_of_memory = "failed", f"out of memory: {exc}", True
    if out_of_memory:
        session.free_memory()  # after the except block: the traceback no longer pins the trial's tensors


def prepare_point(session: PruningSession, space: SearchSpace, point: dict[str, Any], trial: int,
                  rank: int = 0) -> TrialRecord:
    """Decode ``point`` (canonically) and select its groups, without scoring: a ``"pending"`` record holding the
    selection and its digest, or a failed one (infeasible schedule, out of memory)."""
    start = time.perf_counter()
    point = space.canonical(point)
    candidate = space.candidate(point)
    record = TrialRecord(trial=trial, params=point, candidate=candidate.describe(),
                         sample_ids=[session.pool_ids[i] for i in candidate.subset], score=None, status="pending",
                         seconds=0.0, rank=rank, active=space.active(point))

    def select() -> None:
        record.selection = session.select(candidate)
        record.digest = session.digest(candidate, record.selection)

    _guarded(session, record, select)
    record.seconds = time.perf_counter() - start
    return record


def evaluate_point(session: PruningSession, space: SearchSpace, point: dict[str, Any], trial: int,
                   rank: int = 0, prepared: TrialRecord | None = None) -> TrialRecord:
    """Score one point under masks (its :func:`prepare_point` record, made here unless ``prepared``); NaN/inf, OOM
    and infeasible schedules become failed records.

    The record's ``selection`` (not written to the trace) is the selection that was scored: the plan is built
    from it, never from a re-selection (GPU gradients are not bit-deterministic)."""
    record = prepared if prepared is not None else prepare_point(session, space, point, trial, rank)
    if record.status != "pending":
        return record
    start = time.perf_counter()
    candidate = space.candidate(record.params)

    def score() -> None:
        value = session.score(record.selection, session.compensation(candidate, record.selection))
        record.status, record.score, record.error = ("ok", value, "") if math.isfinite(value) else \
            ("failed", None, f"objective is {value}")

    _guarded(session, record, score)
    record.seconds += time.perf_counter() - start
    if record.status != "ok":
        record.selection = None
    return record


def run_search(session: PruningSession, config: SearchConfig, *, seed: int | None = None,
               trace_path: str | Path | None = None, progress: bool = True,
               collective: Collective = LOCAL, provenance: dict[str, Any] | None = None) -> SearchResult:
    """Search the solution space of ``session`` and return the best plan (the model is left unpruned).
    ``provenance``: more entries for the plan's provenance (e.g. ``{"bos": True}``), recorded as it is made.

    ``config.trials`` counts distinct plans: a proposal whose plan was already scored is registered with that
    score at no cost (:func:`classify`). With a ``collective`` of several ranks (each holding the same model and
    data), every rank selects its own point of each round of ``world_size`` proposals (:func:`suggest_batch`), the
    digests are gathered and each rank scores its point if it is a new plan; the records are gathered, so every
    rank keeps the same trace, and the plan is built by the rank that scored the best trial and broadcast. Rank
    0 reads and writes the trace. Same seed and world size, same plan; one rank behaves as before, and which
    proposals are scored never depends on the rank count.
    """
    seed = session.config.seed if seed is None else seed
    check_block_removal(session, config.allocation)  # before the first trial
    if session.uniform and (config.space.keep_layers or config.space.layer_ramp or config.space.scope):
        log.info("uniform pruning (per_layer='uniform' or the model family requires it): the layer schedule is not searched")
        config = replace(config, space=replace(config.space, keep_layers=False, layer_ramp=False, scope=False))
    session.check_reachable(**_fewest_kept(config, session.config), searched=True)  # before the first trial
    t0 = time.perf_counter()
    features = session.stats.features()
    activation_seconds = time.perf_counter() - t0  # the statistics pass FLAP needs too
    if "lstsq" in (config.space.reconstructions if config.space.reconstruction else [session.config.reconstruction]):
        session.grams  # every rank together, before any rank scores a trial alone
    stats_seconds = time.perf_counter() - t0
    space = SearchSpace.build(config, session.config, features)
    session.set_objective(config.data.objective, config.data.kl_top_k)
    objective = {"kind": config.data.objective, **({"top_k": config.data.kl_top_k} if config.data.objective == "kl" else {})}
    problem = {**session.problem(), "space": space.describe(), "engine": asdict(config.engine), "seed": seed,
               **({"search_objective": objective} if config.data.objective != "perplexity" else {})}
    path = Path(trace_path or config.trace_path) if (trace_path or config.trace_path) else None
    with trace_writer(path, enabled=collective.is_zero):  # rank 0 writes the trace, holding its lock
        done = collective.run_on(0, lambda: _open_trace(path, problem))
        trials_start = time.perf_counter()
        fresh, exhausted = _run_trials(session, space, config, done, seed, path, progress, collective)
    ok = [t for t in done if t.status == "ok"]
    if not ok:
        raise SearchFailed(f"all {len(done)} trials failed; last error: {done[-1].error if done else 'no trial ran'}")
    best, extra = max(ok, key=lambda t: (t.score, -t.trial)), {}
    if config.training_aware.candidates and len(top_plans(done, 2)) > 1:  # the best few, ranked after training
        best, extra["training_aware"] = select_after_training(session, space.candidate, done, config.training_aware,
                                                              seed=seed, collective=collective)
    signature = trace_signature(problem)
    saved = sum(t.repeat_of is not None for t in done)
    found = {"engine": config.engine.name, "trial": best.trial, "score": best.score, "trials": len(done),
             "plans_scored": distinct_plans(done), "trials_saved": saved, "exhausted": exhausted,
             "signature": signature, "world_size": collective.world_size, "objective": objective}
    if collective.is_zero:
        log.info("search: %d distinct plans scored in %d proposals, %d repeated plans registered at no cost%s",
                 distinct_plans(done), len(done), saved, " (the space is exhausted)" if exhausted else "")
    owner = best.rank if best.trial in fresh else 0  # the scored selection lives on the rank that scored it
    candidate, chosen = space.candidate(best.params), best.selection
    if config.allocation.generations and not session.uniform:  # then where to cut, with the best's scoring
        seed_selection = collective.run_on(owner, lambda: chosen if chosen is not None else session.select(candidate))
        left = None if config.time_budget_s is None else config.time_budget_s - (time.perf_counter() - trials_start)
        refined = refine_allocation(session, candidate, seed_selection, config.allocation, seed=seed,
                                    collective=collective, time_budget_s=left, progress=progress)
        chosen, owner, extra["allocation"] = refined.selection, 0, refined.info
    plan = collective.run_on(owner, lambda: session.plan(candidate, chosen, search=found, **extra,
                                                         **(provenance or {})))
    seconds = time.perf_counter() - t0
    return SearchResult(trials=done, best=best, plan=plan, signature=signature, seconds=seconds,
                        stats_seconds=stats_seconds, extra=extra, exhausted=exhausted,
                        flap_seconds=flap_prune_seconds(session, activation_seconds),
                        refit=session.least_squares if plan.refits_weights else None)


def flap_prune_seconds(session: PruningSession, statistics_seconds: float) -> float | None:
    """FLAP's own prune time on this machine, the yardstick of a search's cost: the activation statistics pass it
    needs too (``statistics_seconds``) plus its selection and bias compensation (its reference configuration on
    the whole pool), timed here after the search. None where FLAP's configuration does not apply (e.g. a family
    pruned uniformly)."""
    flap = Candidate("flap_reference", "sum", list(range(int(session.pool.shape[0]))), scope="standardized",
                     reconstruction="bias")
    start = time.perf_counter()
    try:
        session.compensation(flap, session.select(flap))
    except Exception as error:  # a yardstick of the cost never fails a finished search
        log.info("FLAP's prune time not measured: %s: %s", type(error).__name__, error)
        return None
    return statistics_seconds + time.perf_counter() - start


def _fewest_kept(config: SearchConfig, pruning: Any) -> dict[str, int]:
    """The fewest leading/trailing layers any candidate of the space keeps whole (the most removable ones)."""
    dims = config.space.dimensions()
    return {key: int(dims[key].bound[0]) if key in dims else getattr(pruning, key) for key in ("keep_first", "keep_last")}


def _open_trace(path: Path | None, problem: dict[str, Any]) -> list[TrialRecord]:
    """The finished trials of this problem's trace at ``path`` (a new trace is started when there is none)."""
    done = open_trace(path, problem) if path else []
    if done:
        log.info("resuming search from %s: %d finished trials", path, len(done))
    return done


SCORE, FAIL = "score", "fail"


def classify(done: list[TrialRecord], drafts: list[TrialRecord], need: int, streak: int,
             max_repeats: int) -> tuple[dict[int, str | int], bool]:
    """What happens to a round's drafted trials (:func:`prepare_point` records), decided in trial order from their
    digests alone, so every rank, and any number of ranks, decides alike.

    Returns ``({trial: verdict}, exhausted)``: :data:`SCORE` (a new plan), :data:`FAIL` (failed before its
    selection: counts as a trial, as it always did) or the earlier trial whose plan it repeats (registered with that
    score, not counted against the budget). Trials past the ``need``-th counted one, and after the
    ``max_repeats``-th repeat in a row (``streak`` repeats precede the round; ``exhausted`` is then True), get no
    verdict: they are dropped, as a one-rank search would never have proposed them.
    """
    seen = {t.digest: t.trial for t in done if t.digest and t.repeat_of is None}
    verdicts: dict[int, str | int] = {}
    exhausted = streak >= max_repeats
    for draft in sorted(drafts, key=lambda d: d.trial):
        if need <= 0 or exhausted:
            break
        if draft.digest in seen:
            verdicts[draft.trial] = seen[draft.digest]
            streak += 1
            exhausted = streak >= max_repeats
            continue
        verdicts[draft.trial] = SCORE if draft.digest else FAIL
        need, streak = need - 1, 0
        if draft.digest:
            seen[draft.digest] = draft.trial
    return verdicts, exhausted


def _counted(done: list[TrialRecord]) -> int:
    """Trials that count against the budget: every one not registered as a repeat."""
    return sum(t.repeat_of is None for t in done)


def _streak(done: list[TrialRecord]) -> int:
    """Repeats at the end of ``done`` (a resumed search continues its streak)."""
    count = 0
    for record in reversed(done):
        if record.repeat_of is None:
            break
        count += 1
    return count


def _run_trials(session, space, config, done, seed, path, progress,
                collective: Collective) -> tuple[set[int], bool]:
    """Rounds of ``world_size`` proposals (one per rank) until ``config.trials`` counted trials; returns the trials
    scored here and whether the space was exhausted. Every rank leaves each round with the same records, so each
    decision (score, repeat, stop, fail) is the same."""
    start, failures, elapsed, fresh = time.perf_counter(), 0, 0.0, set()
    width, rank = collective.world_size, collective.rank
    exhausted = _streak(done) >= config.engine.max_repeats
    with make_progress() as bar:
        task = bar.add_task("search", total=config.trials, completed=_counted(done), info="",
                            visible=progress_enabled(progress) and collective.is_zero)
        while _counted(done) < config.trials and not exhausted:
            if config.time_budget_s is not None and elapsed > config.time_budget_s:
                log.info("search time budget reached after %d trials", _counted(done))
                break
            first = len(done) - len(done) % width  # a round resumed midway is proposed as it was first
            point = suggest_batch(space, done[:first], first, width, seed)[rank]
            mine = first + rank
            drafted = _on_rank(collective, lambda: prepare_point(session, space, point, mine, rank)) \
                if mine >= len(done) else None
            drafts, _, _ = _gather(collective, drafted, start)
            verdicts, exhausted = classify(done, drafts, config.trials - _counted(done), _streak(done),
                                           config.engine.max_repeats)
            own = drafted["value"] if drafted else None
            evaluated = _on_rank(collective, lambda: evaluate_point(session, space, point, mine, rank, prepared=own)) \
                if verdicts.get(mine) == SCORE else None
            scored, elapsed, gathered = _gather(collective, evaluated, start)
            results = {r.trial: r for r in drafts + scored}
            if evaluated is not None:
                results[mine] = evaluated["value"]  # with its selection
            for trial, verdict in sorted(verdicts.items()):
                source = next(t for t in done if t.trial == verdict) if isinstance(verdict, int) else None
                record = results[trial] if source is None else _repeat(results[trial], source)
                failures = _register(done, record, path if collective.is_zero else None, failures, config)
                fresh.add(trial)
            raise_if_stopped(gathered, len(done), path)  # a preempted job: every rank stops after this round
            best = max((t.score for t in done if t.status == "ok"), default=float("nan"))
            info = (f"best KL {-best:.4f}" if session.objective_kind == "kl"
                    else f"best -log ppl {best:.4f} (ppl {math.exp(-best):.2f})")
            bar.update(task, completed=_counted(done), info=info)
    return fresh, exhausted


def _repeat(draft: TrialRecord, source: TrialRecord) -> TrialRecord:
    """``draft`` registered with the score (or failure) of the earlier trial whose plan it repeats."""
    return replace(draft, score=source.score, status=source.status, error=source.error, repeat_of=source.trial,
                   selection=None)


def _on_rank(collective: Collective, fn: Callable[[], TrialRecord]) -> dict[str, Any]:
    """This rank's step as an envelope; in a single process an unexpected error propagates as it is."""
    if collective.world_size == 1:
        return {"ok": True, "value": fn()}
    return attempt(fn, collective.rank)


def _gather(collective: Collective, envelope: dict[str, Any] | None,
            start: float) -> tuple[list[TrialRecord], float, list[dict[str, Any]]]:
    """Every rank's record of this step (without selections), raised on every rank as :class:`SearchFailed` if the
    step failed on one; the longest any rank has been searching; and the envelopes themselves (each carries its
    rank's pending stop request, :mod:`~adapruner_lightning.search.stop`)."""
    envelope = envelope or {"ok": True, "value": None}
    own = envelope.get("value")
    gathered = collective.all_gather({**envelope, "value": replace(own, selection=None) if own else None,
                                      "elapsed": time.perf_counter() - start, "stop": stop_reason()})
    collective.raise_if_failed(gathered)
    records = [e["value"] for e in gathered if e["value"] is not None]
    return records, max(e["elapsed"] for e in gathered), gathered


def _register(done: list[TrialRecord], record: TrialRecord, path: Path | None, failures: int,
              config: SearchConfig) -> int:
    """Append ``record`` (to the trace too, when ``path``); returns the consecutive failed evaluations (repeats
    leave the count as it is), raising at the limit."""
    _keep_best_selection(done, record)
    done.append(record)
    _append(path, record.to_json())
    if record.repeat_of is not None:  # no new evaluation: neither a failure nor a success
        return failures
    failures = failures + 1 if record.status == "failed" else 0
    if failures >= config.engine.max_failures:
        errors = "; ".join(sorted({t.error[:120] for t in [t for t in done if t.repeat_of is None][-failures:]}))
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
