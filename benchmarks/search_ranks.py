"""The search on 1 and on 2 processes at equal trials (one thread per process), side by side in one run.

On the embedded SmolLM2-135M (20 % of total parameters removed), for each seed: the same splits
(``make_splits(tok, texts_for("austen:calibration"), n_pool=32, pool_seq_len=128, n_objective=4,
objective_seq_len=256, seed=seed)``) and the callback's default search (8 trials, 4 random, GP), run by
``run_search`` on a gloo job of ``world_size`` processes (each loads the model, 1 torch thread). Per run: the
statistics pass (split between the ranks), the trials, the whole search, the longest time any rank spent
inside one collective (the bound the process-group timeout must exceed), the longest trial, the best objective.
The 2-process search proposes its points in rounds of two (constant liar), so its trials are not the
1-process ones: the best objectives are reported side by side, not claimed equal.

Results: ``benchmarks/results/search_ranks.md`` and ``.json``.

Usage::

    python benchmarks/search_ranks.py            # seeds 0 1 2, 8 trials (~15 min on 2 cores)
    python benchmarks/search_ranks.py --quick    # seed 0, 4 trials, pool 16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WORKER_TIMEOUT_S = 1800


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--init-points", type=int, default=4)
    p.add_argument("--pool", type=int, default=32)
    p.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--quick", action="store_true", help="seed 0, 4 trials (2 random), pool 16")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)  # internal: one rank's run
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.trials, args.init_points, args.pool = [0], 4, 2, 16
    return args


# --------------------------------------------------------------------------------------------- one rank
class TimedCollective:
    """A Collective that records how long this rank spends inside each collective call."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.waits = inner, []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in ("all_gather", "broadcast", "sum_", "run_on", "together"):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.waits.append(time.perf_counter() - start)
        return timed


def worker(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """This rank's search (env RANK / WORLD_SIZE / MASTER_*), as a record."""
    from adapruner_lightning.core.config import PruningConfig
    from adapruner_lightning.core.session import PruningSession
    from adapruner_lightning.data.calibration import make_splits
    from adapruner_lightning.data.models import load_model
    from adapruner_lightning.data.text import texts_for
    from adapruner_lightning.distributed import Collective
    from adapruner_lightning.search.config import SearchConfig
    from adapruner_lightning.search.runner import run_search

    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world > 1:
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(hours=1))
    model, tok = load_model(None)
    splits = make_splits(tok, texts_for("austen:calibration"), n_pool=args.pool, pool_seq_len=128, n_objective=4,
                         objective_seq_len=256, seed=seed)
    collective = TimedCollective(Collective.current())
    session = PruningSession(model, PruningConfig(target_ratio=args.ratio, seed=seed), splits.pool,
                             objective_windows=splits.objective, pool_ids=splits.pool_ids, progress=False,
                             collective=collective)
    start = time.perf_counter()
    result = run_search(session, SearchConfig.of(trials=args.trials, init_points=args.init_points),
                        progress=False, collective=collective)
    return {"rank": rank, "world_size": world, "seed": seed, "search_seconds": time.perf_counter() - start,
            "stats_seconds": result.stats_seconds, "longest_wait": max(collective.waits, default=0.0),
            "trial_seconds": [t.seconds for t in result.trials if t.rank == rank],
            "best_score": result.best.score, "best_trial": result.best.trial, "plan_digest": _digest(result.plan.to_dict()["layers"])}


def _digest(data: Any) -> str:
    """A short hash of plain data (a plan's layers: equal on every rank, kilobytes of index lists)."""
    import hashlib

    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ the driver
def _rank_env() -> dict[str, str]:
    """This environment without distributed variables, a free loopback port, one thread per process."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def launch(args: argparse.Namespace, seed: int, world: int, scratch: Path) -> list[dict[str, Any]]:
    """``world`` worker processes of this script for ``seed``; their records."""
    env = _rank_env()
    outs = [scratch / f"s{seed}_w{world}_r{r}.json" for r in range(world)]
    cmd = [sys.executable, __file__, "--worker", "{out}", "--seeds", str(seed), "--trials", str(args.trials),
           "--init-points", str(args.init_points), "--pool", str(args.pool), "--ratio", str(args.ratio)]
    procs = [subprocess.Popen([c.replace("{out}", str(outs[r])) for c in cmd],
                              env={**env, "RANK": str(r), "WORLD_SIZE": str(world)}) for r in range(world)]
    for proc in procs:
        if proc.wait(timeout=WORKER_TIMEOUT_S) != 0:
            raise SystemExit(f"worker {proc.args} failed with exit code {proc.returncode}")
    return [json.loads(out.read_text()) for out in outs]


def summarise(runs: dict[tuple[int, int], list[dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    """Per world size: means (and spreads) over seeds of the slowest rank's times; paired ratios to 1 process."""
    rows = {}
    for world in args.world_sizes:
        per_seed = [runs[(seed, world)] for seed in args.seeds]
        search = [max(r["search_seconds"] for r in ranks) for ranks in per_seed]
        ratio = [s / max(r["search_seconds"] for r in runs[(seed, args.world_sizes[0])])
                 for s, seed in zip(search, args.seeds)]
        rows[world] = {
            "search_seconds": search, "ratio_to_first": ratio,
            "stats_seconds": [max(r["stats_seconds"] for r in ranks) for ranks in per_seed],
            "longest_wait": [max(r["longest_wait"] for r in ranks) for ranks in per_seed],
            "longest_trial": [max(t for r in ranks for t in r["trial_seconds"]) for ranks in per_seed],
            "best_ppl": [math.exp(-ranks[0]["best_score"]) for ranks in per_seed],
            "plans_equal_across_ranks": all(all(r["plan_digest"] == ranks[0]["plan_digest"] for r in ranks)
                                            for ranks in per_seed),
        }
    return rows


def _ms(values: list[float], fmt: str = "{:.1f}") -> str:
    mean = statistics.fmean(values)
    return fmt.format(mean) + (f" +- {fmt.format(statistics.stdev(values))}" if len(values) > 1 else "")


def to_markdown(result: dict[str, Any]) -> str:
    args, rows, info = result["args"], result["rows"], result["machine"]
    lines = [
        "# The search on 1 and 2 processes (gloo), equal trials, one torch thread per process", "",
        f"Embedded SmolLM2-135M, {args['ratio']:.0%} of total parameters removed, pool N={args['pool']} x 128 "
        f"tokens, 4 objective windows x 256 (austen:calibration), {args['trials']} trials ({args['init_points']} "
        f"random, then GP), seeds {args['seeds']}; mean +- std over seeds of the slowest rank. "
        f"Machine: {info.get('cpu_model')} ({info.get('cpu_count')} cores), torch {info.get('torch')}, "
        f"{info.get('date')}. Command: `{info.get('command')}`.", "",
        "| processes | search s | ratio to 1 process (paired) | statistics pass s | longest trial s | "
        "longest wait in one collective s | best objective ppl | same plan on every rank |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for world, row in rows.items():
        lines.append(f"| {world} | {_ms(row['search_seconds'])} | {_ms(row['ratio_to_first'], '{:.2f}')} | "
                     f"{_ms(row['stats_seconds'])} | {_ms(row['longest_trial'])} | {_ms(row['longest_wait'])} | "
                     f"{_ms(row['best_ppl'], '{:.2f}')} | {row['plans_equal_across_ranks']} |")
    lines += ["", "The 2-process search proposes two points per round (constant liar), so its trials differ from the "
              "1-process search's after the random start; the best objectives are shown, not claimed equal. "
              "The longest wait bounds what Lightning's process-group timeout (30 min by default) must exceed: "
              "about one trial, where a rank-0-only search made every other rank wait for the whole search."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        args.worker.write_text(json.dumps(worker(args, args.seeds[0])))
        return 0
    from bench_common import machine_info

    info = machine_info(torch.device("cpu"))
    scratch = args.out_dir / ".search_ranks_runs"
    scratch.mkdir(parents=True, exist_ok=True)
    runs = {}
    for seed in args.seeds:
        for world in args.world_sizes:
            start = time.perf_counter()
            runs[(seed, world)] = launch(args, seed, world, scratch)
            print(f"seed {seed}, {world} process(es): {time.perf_counter() - start:.0f} s", file=sys.stderr)
    result = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "machine": info,
              "rows": summarise(runs, args), "runs": {f"{s}/{w}": r for (s, w), r in runs.items()}}
    name = "search_ranks_quick" if args.quick else "search_ranks"
    (args.out_dir / f"{name}.json").write_text(json.dumps(result, indent=1))
    (args.out_dir / f"{name}.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
