"""Standalone: the allocation stage (``refine_allocation``) on the ranks of a gloo job (env ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), on the tiny session of ``tests/helpers_core.py``, from a fixed
candidate's selection. Rank ``r`` writes ``OUT/rank{r}.json`` (counts, KL, selection).

Usage: python allocation_ranks.py OUT GENERATIONS [TIME_BUDGET_S|none] [STOP_RANK]
(STOP_RANK: that rank requests a stop before the stage; every rank writes the SearchInterrupted message)
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


from adapruner_lightning.core.session import Candidate  # noqa: E402
from adapruner_lightning.errors import SearchInterrupted  # noqa: E402
from adapruner_lightning.search.allocation import AllocationConfig, refine_allocation  # noqa: E402
from adapruner_lightning.search.stop import request_stop  # noqa: E402
from helpers_dist import join_ranks  # noqa: E402
from helpers_core import small_session  # noqa: E402


def main() -> None:
    out, generations = Path(sys.argv[1]), int(sys.argv[2])
    budget = float(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] != "none" else None
    stop_rank = int(sys.argv[4]) if len(sys.argv) > 4 else None
    out.mkdir(parents=True, exist_ok=True)
    collective = join_ranks()
    rank = collective.rank
    session = small_session()
    session.collective = collective
    candidate = Candidate("wanda_sp", "sum", list(range(6)), reconstruction="lstsq")
    session.grams  # every rank together
    if stop_rank == rank:
        request_stop("SIGUSR1")
    try:
        result = refine_allocation(session, candidate, session.select(candidate),
                                   AllocationConfig(generations=generations, offspring=5), seed=3,
                                   collective=collective, time_budget_s=budget)
    except SearchInterrupted as exc:
        (out / f"rank{rank}.json").write_text(json.dumps({"interrupted": str(exc)}))
        print(f"[rank {rank}] ALLOCATION_INTERRUPTED", flush=True)
        return
    (out / f"rank{rank}.json").write_text(json.dumps({
        "info": {k: v for k, v in result.info.items() if k != "seconds"},
        "selection": {i: asdict(sel) for i, sel in result.selection.items()}}))
    print(f"[rank {rank}] ALLOCATION_OK", flush=True)


if __name__ == "__main__":
    main()
