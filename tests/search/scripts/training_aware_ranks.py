"""Standalone: the search with the training-aware stage on the ranks of a gloo job (env ``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``), on the tiny session of ``tests/helpers_core.py``. Rank ``r`` writes
``OUT/rank{r}.json`` (what the stage did, without its wall time, and the plan's layers).

Usage: python training_aware_ranks.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


from adapruner_lightning.search.config import SearchConfig  # noqa: E402
from adapruner_lightning.search.runner import run_search  # noqa: E402
from helpers_dist import join_ranks  # noqa: E402
from helpers_core import SMALL, small_session  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    collective = join_ranks()
    rank = collective.rank
    session = small_session()
    session.collective = collective
    config = SearchConfig.of(**{**SMALL, "trials": 4, "train_candidates": 3, "train_steps": 2})
    result = run_search(session, config, progress=False, collective=collective)
    stage = {k: v for k, v in result.extra["training_aware"].items() if k != "seconds"}
    (out / f"rank{rank}.json").write_text(json.dumps({"stage": stage, "layers": result.plan.to_dict()["layers"]}))
    print(f"[rank {rank}] TRAINING_AWARE_OK", flush=True)


if __name__ == "__main__":
    main()
