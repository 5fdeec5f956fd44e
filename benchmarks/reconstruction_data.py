"""How many calibration tokens the least-squares repair fits on: the pool's 8k alone, or the pool and more windows.

Development data only. The embedded SmolLM2-135M (float32), the splits of ``benchmarks/selection.py``
(``make_splits(..., n_pool=64, pool_seq_len=128, n_objective=8, objective_seq_len=256, seed=0, n_dev=96)``): the
least-squares statistics sum over the pool (64 x 128 tokens) and the first ``N`` fine-tune windows of 256 tokens
(``DataSplits.reconstruction(N)``, what ``search.data.reconstruction_windows`` gives the library); perplexity on
the 96 development windows. Two selections at each ratio, both repaired by least squares (damping 0.01): FLAP's
reference selection, and the ``obs`` metric's (layerwise scope; it reads the same statistics). The evaluation
novels and the standard tasks are not read.

    python benchmarks/reconstruction_data.py                          # 20 and 30 %, N = 0, 32, 96, 224
    python benchmarks/reconstruction_data.py --ratios 0.2 --windows 0 96

Results: ``benchmarks/results/reconstruction_data.{json,md}`` (a rerun skips the finished cells). The windows' Gram
pass (summed with the pool's, computed once) is timed alone, on one thread of the machine named in the file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.masking import masked
from adapruner_lightning.core.reconstruction import GramCache, collect_grams
from adapruner_lightning.core.session import Candidate, PruningSession
from adapruner_lightning.data.text import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine_info  # noqa: E402
from selection import FLAP, POOL, Bench  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "reconstruction_data"
#: the two selections: name -> candidate options (both repaired by least squares)
SELECTIONS = {"flap": FLAP, "obs layerwise": dict(metric="obs", reducer="sum", scope="layerwise")}


def _summed(a: GramCache, b: GramCache) -> GramCache:
    return GramCache([{k: x[k] + y[k] for k in x} for x, y in zip(a.layers, b.layers)], a.tokens + b.tokens)


def cells(bench: Bench, ratio: float, windows: int) -> list[dict]:
    """Both selections' dev perplexity at ``ratio`` with the Gram of the pool and ``windows`` more windows (the
    pool's Gram is computed once and shared; the windows' pass is timed alone)."""
    shared = bench.session(ratio, "lstsq")
    extra = bench.splits.reconstruction(windows)
    start = time.perf_counter()
    grams = _summed(shared.grams, collect_grams(bench.model, shared.layers, extra)) if windows else shared.grams
    gram_seconds = time.perf_counter() - start
    session = PruningSession(bench.model, PruningConfig(target_ratio=ratio, reconstruction="lstsq"),
                             bench.splits.pool, objective_windows=bench.splits.objective,
                             pool_ids=bench.splits.pool_ids, progress=False, reconstruction_windows=extra,
                             stats=shared.stats, grams=grams)
    tokens = grams.tokens
    rows = []
    for name, options in SELECTIONS.items():
        candidate = Candidate(subset=list(range(POOL)), reconstruction="lstsq", **options)
        selection = session.select(candidate)
        with masked(session.layers, selection, session.compensation(candidate, selection)):
            ppl = bench.dev_ppl(bench.model)
        rows.append({"ratio": ratio, "windows": windows, "tokens": tokens, "selection": name, "dev_ppl": ppl,
                     "gram_seconds": gram_seconds})
    return rows


def table(data: dict) -> str:
    """Dev perplexity per selection, ratio and window count, and its ratio to the pool alone's (N = 0)."""
    rows = data["rows"]
    base = {(r["ratio"], r["selection"]): r["dev_ppl"] for r in rows if r["windows"] == 0}
    lines = ["| ratio | selection | windows N | Gram tokens | dev ppl | x pool alone | the windows' Gram pass (s) |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["ratio"], r["selection"], r["windows"])):
        ref = base.get((r["ratio"], r["selection"]))
        times = f"{r['gram_seconds']:.0f}" if r["windows"] else "—"
        against = f"{r['dev_ppl'] / ref:.3f}" if ref else "—"
        lines.append(f"| {r['ratio']:.0%} | {r['selection']} + lstsq | {r['windows']} | {r['tokens']:,} | "
                     f"{r['dev_ppl']:.2f} | {against} | {times} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.3])
    p.add_argument("--windows", type=int, nargs="+", default=[0, 32, 96, 224])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    path = out.with_suffix(".json")
    data = json.loads(path.read_text()) if path.exists() else {"rows": [], "runs": []}
    bench, ran = Bench(), 0
    for ratio in args.ratios:
        for windows in args.windows:
            if any(r["ratio"] == ratio and r["windows"] == windows for r in data["rows"]):
                continue
            data["rows"] += cells(bench, ratio, windows)
            ran += 1
            write_text_atomic(path, json.dumps(data, indent=1))
            print(json.dumps(data["rows"][-2:]), flush=True)
    data["runs"].append({**machine_info(torch.device("cpu")), "cells": ran})
    write_text_atomic(path, json.dumps(data, indent=1))
    header = (f"# Calibration tokens of the least-squares repair — development data only\n\n"
              f"Command and data: see `benchmarks/reconstruction_data.py`; runs: `{path.name}`.\n\n")
    write_text_atomic(out.with_suffix(".md"), header + table(data))


if __name__ == "__main__":
    main()
