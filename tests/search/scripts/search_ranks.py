"""Standalone: ``run_search`` on the ranks of a gloo job (env ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``), on the tiny session of ``tests/helpers_core.py``. Rank ``r`` writes ``OUT/rank{r}.json`` (plan,
trace) and ``OUT/stats{r}.pt`` and ``OUT/grams{r}.pt`` (the statistics it searched with); the trace goes to ``OUT/trace.jsonl``.

Usage: python search_ranks.py OUT TRIALS {ok,fail,repeats}
``fail``: rank 1's second trial raises ``RuntimeError("boom on rank 1")``; each rank then writes
``OUT/error{r}.txt`` with the exception it ended with. ``repeats``: random search of a space with few plans for
its data-free metric (:data:`REPEATS`), so that proposals repeat plans already scored.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import adapruner_lightning.search.runner as runner  # noqa: E402
from adapruner_lightning.distributed import Collective  # noqa: E402
from adapruner_lightning.search.config import SearchConfig  # noqa: E402
from helpers_core import SMALL, small_session  # noqa: E402


#: random search over magnitude_l2 (5 plans: 3 scopes, 2 reducers where they matter) and flap_reference
REPEATS = dict(engine="random", metrics=["magnitude_l2", "flap_reference"], reducers=["sum", "max"],
               search_keep_layers=False, search_layer_ramp=False, search_reconstruction=False, max_repeats=20)


def fail_second_trial_on_rank_one(rank: int) -> None:
    real, calls = runner.evaluate_point, []

    def evaluate(*args, **kwargs):
        calls.append(1)
        if rank == 1 and len(calls) == 2:
            raise RuntimeError("boom on rank 1")
        return real(*args, **kwargs)

    runner.evaluate_point = evaluate


def main() -> None:
    out, trials, mode = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if world > 1:
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    if mode == "fail":
        fail_second_trial_on_rank_one(rank)
    collective = Collective.current()
    session = small_session()
    session.collective = collective
    try:
        config = SearchConfig.of(**{**SMALL, "trials": trials, **(REPEATS if mode == "repeats" else {})})
        result = runner.run_search(session, config,
                                   trace_path=out / "trace.jsonl", progress=False, collective=collective)
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        (out / f"error{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
        raise SystemExit(1)
    torch.save(session.stats.layers, out / f"stats{rank}.pt")
    torch.save(session.grams.layers, out / f"grams{rank}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps({"plan": result.plan.to_dict(), "trace": result.trace()}))
    print(f"[rank {rank}] SEARCH_OK", flush=True)


if __name__ == "__main__":
    main()
