"""The one plan pipeline: search the solution space, or take the configured candidate, and release the session.

Every way of pruning goes through :func:`find_plan`: :func:`adapruner_lightning.api.prune`, ``adapruner prune``
and the callback (``lightning/planning.py``, on every rank of a job).
"""

from __future__ import annotations

import time
from pathlib import Path

from adapruner_lightning.core.session import PruningSession
from adapruner_lightning.distributed import LOCAL, Collective
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.search import runner
from adapruner_lightning.search.runner import SearchResult


def find_plan(session: PruningSession, search: SearchConfig, *, trace_path: str | Path | None = None,
              collective: Collective = LOCAL, progress: bool = True, bos: bool | None = None) -> SearchResult:
    """The plan for ``session``'s model: the best of a search, or with ``search.trials == 0`` the configured
    candidate (the PruningConfig's metric, schedule and ``num_samples`` seeded samples). The model is left unpruned.

    Every rank of ``collective`` calls this with the same model and data: the statistics pass and the trials are
    split between the ranks and every rank returns the same plan; without a search every rank selects (no rank
    idles in the next collective) and rank 0's selection is the one kept. The session's cached statistics are
    released at the end, whatever happens (they are not needed to prune and would hold memory during fine-tuning).

    Args:
        session: the pruning session (model, pruning config, calibration pool and objective windows).
        search: the search (``trials == 0``: no search).
        trace_path: the JSONL trace (an existing trace of the same problem resumes); None: ``search.trace_path``.
        collective: the ranks of a distributed job.
        progress: show progress bars.
        bos: whether the calibration and objective windows start with BOS (recorded in the plan's provenance as
            the plan is made; None: unknown, e.g. token ids given directly).

    Returns:
        The :class:`~adapruner_lightning.search.runner.SearchResult` (no trials without a search), with the
        least-squares statistics a ``reconstruction='lstsq'`` plan is applied with (``result.refit``).
    """
    start = time.perf_counter()
    try:
        if search.trials > 0:
            result = runner.run_search(session, search, trace_path=trace_path, progress=progress,
                                       collective=collective, provenance={"bos": bos})
        else:
            plan = collective.broadcast(collective.together(lambda: session.plan(session.default_candidate(), bos=bos)))
            result = SearchResult(trials=[], best=None, plan=plan, signature="", seconds=time.perf_counter() - start,
                                  refit=session.least_squares if plan.refits_weights else None)
        return result  # result.refit holds its statistics: they outlive the release below
    finally:
        session.release()
