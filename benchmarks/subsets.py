"""How many calibration samples, and which: the same pruning configuration on different calibration subsets.

On the embedded SmolLM2-135M (20 % of total parameters removed), one pool of 64 x 128 tokens of the calibration
novels (``make_splits(..., n_pool=64, pool_seq_len=128, n_objective=8, objective_seq_len=256, seed=0)``, as
``benchmarks/quality.py``), each configuration is scored under masks on

* the search objective: perplexity of the 8 held-apart objective windows (what a search sees), and
* a development set: the last ``--dev-windows`` fine-tune windows of the calibration novels, which no search and
  no benchmark recovery reads (the recoveries read the first ``steps x 4`` fine-tune windows),

never on the evaluation novels, so a default chosen from this table is not tuned on evaluation data. Subsets:
the ``k`` samples nearest to a random point of the search space's PCA embedding (how the search encodes a subset),
``k`` uniformly random samples, and the whole pool; ``--draws`` random draws of each (seeded). Configurations:
FLAP's reference point (``flap_reference``, standardized, bias compensation) and LLM-Pruner's default (taylor,
layers [4, N-2)).

Results: ``benchmarks/results/subsets.md`` and ``.json``.

    python benchmarks/subsets.py            # 6 draws (about 10 min on 2 idle cores)
    python benchmarks/subsets.py --quick    # 2 draws, FLAP only
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.masking import masked
from adapruner_lightning.core.session import Candidate, PruningSession
from adapruner_lightning.data.calibration import make_splits
from adapruner_lightning.data.models import load_model
from adapruner_lightning.data.text import texts_for
from adapruner_lightning.evaluation.metrics import evaluate_perplexity
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.search.space import SearchSpace

from bench_common import machine_info

RESULTS_DIR = Path(__file__).resolve().parent / "results"
POOL = 64
#: configuration name -> Candidate fields other than the subset
CONFIGS = {
    "FLAP reference": dict(metric="flap_reference", reducer="sum", scope="standardized", bias_compensation=True),
    "LLM-Pruner default": dict(metric="taylor", reducer="sum", keep_first=4, keep_last=2),
}
#: subset kind -> (k, drawn how)
KINDS = {"nearest 10": (10, "nearest"), "random 10": (10, "random"), "random 20": (20, "random"),
         "random 32": (32, "random"), "whole pool": (POOL, "all")}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 draws, FLAP's point only")
    p.add_argument("--draws", type=int, default=6, help="random subsets of each kind")
    p.add_argument("--dev-windows", type=int, default=24, help="fine-tune windows of 256 tokens (from the end)")
    p.add_argument("--out", default=str(RESULTS_DIR / "subsets"))
    return p


class Bench:
    """The dense model, its pool session, the objective and development windows, and the subset encoding."""

    def __init__(self, dev_windows: int) -> None:
        self.model, tokenizer = load_model(None)
        splits = make_splits(tokenizer, texts_for("austen:calibration"), n_pool=POOL, pool_seq_len=128,
                             n_objective=8, objective_seq_len=256, seed=0)
        self.dev = splits.finetune[-dev_windows:]
        self.session = PruningSession(self.model, PruningConfig(target_ratio=0.2, seed=0), splits.pool,
                                      objective_windows=splits.objective, pool_ids=splits.pool_ids, progress=False)
        self.space = SearchSpace.build(SearchConfig(), self.session.config, self.session.stats.features())
        self.dense = {"objective": math.exp(-self.session.score({})), "dev": self._dev_ppl({}, None)}

    def _dev_ppl(self, selection, biases) -> float:
        with masked(self.session.layers, selection, biases):
            return evaluate_perplexity(self.model, self.dev, batch_size=8, progress=False)

    def subset(self, kind: str, rng: np.random.RandomState) -> list[int]:
        """One draw of a subset of ``kind``."""
        k, how = KINDS[kind]
        if how == "nearest":
            return self.space.subset({**self.space.random_point(rng), "num_samples": k})
        return sorted(rng.choice(POOL, k, replace=False).tolist()) if how == "random" else list(range(POOL))

    def score(self, config: str, subset: list[int]) -> dict[str, float]:
        """Objective and development perplexity of ``config`` on ``subset``."""
        candidate = Candidate(subset=subset, **CONFIGS[config])
        selection = self.session.select(candidate)
        biases = self.session.compensation(candidate, selection)
        return {"objective": math.exp(-self.session.score(selection, biases)),
                "dev": self._dev_ppl(selection, biases)}


def _summary(values: list[float]) -> str:
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {statistics.stdev(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def table(rows: list[dict], dense: dict[str, float]) -> str:
    """Mean ± std (min-max) over draws, per configuration and subset kind, and as a multiple of dense."""
    lines = ["| configuration | subset | draws | objective ppl | dev ppl | dev ppl x dense |",
             "|---|---|---:|---|---|---:|"]
    for config in CONFIGS:
        for kind in KINDS:
            rs = [r for r in rows if r["config"] == config and r["kind"] == kind]
            if rs:
                dev = [r["dev"] for r in rs]
                lines.append(f"| {config} | {kind} | {len(rs)} | {_summary([r['objective'] for r in rs])} | "
                             f"{_summary(dev)} | {statistics.mean(dev) / dense['dev']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    draws, configs = (2, ["FLAP reference"]) if args.quick else (args.draws, list(CONFIGS))
    start = time.perf_counter()
    bench = Bench(args.dev_windows)
    rows = []
    for config in configs:
        rng = np.random.RandomState(123)  # the same draws for every configuration
        for kind in KINDS:
            for draw in range(1 if KINDS[kind][1] == "all" else draws):
                subset = bench.subset(kind, rng)
                row = {"config": config, "kind": kind, "draw": draw, "subset": subset, **bench.score(config, subset)}
                rows.append(row)
                print(f"{config:<20} {kind:<12} {draw} obj {row['objective']:.2f} dev {row['dev']:.2f}", flush=True)
    machine = machine_info(torch.device("cpu"))
    header = (f"Calibration subsets — {machine['date']} — {machine['cpu_model']}, {machine['cpu_count']} cores, torch "
              f"{torch.__version__}, {torch.get_num_threads()} threads, {time.perf_counter() - start:.0f} s. Command: "
              f"`{machine['command']}`. Embedded SmolLM2-135M, 20% of total parameters, pool 64 x 128 tokens of the "
              f"calibration novels; objective = the search's 8 x 256 held-apart windows; dev = the last "
              f"{args.dev_windows} x 256 fine-tune windows (calibration novels; read by no search and no recovery). "
              f"Dense: objective ppl {bench.dense['objective']:.2f}, dev ppl {bench.dense['dev']:.2f}. Draws seeded "
              f"(numpy 123), the same subsets for every configuration.")
    md = header + "\n\n" + table(rows, bench.dense) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "dense": bench.dense, "rows": rows}, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
