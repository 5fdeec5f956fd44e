"""Which units to remove once the kept weights are repaired: FLAP's selection against the ``obs`` metric (what
removing a unit costs after the least-squares repair), every plan repaired by least squares, on development data only.

Data: the embedded SmolLM2-135M (float32); pool 64 x 128 tokens of the four calibration novels and their 96
development windows of 256 tokens (``make_splits(..., n_pool=64, pool_seq_len=128, n_objective=8,
objective_seq_len=256, seed=0, n_dev=96)``: the development split ``benchmarks/quality.py`` chooses on; no search,
objective or recovery reads it). The evaluation novels and the standard tasks are not read.

Variants at each ratio of total parameters, scored under masks with the plan's repair (what is exported):

* ``flap + bias``: FLAP's reference procedure (``flap_reference``, standardized, its bias compensation);
* ``flap + lstsq``: the same selection, repaired by least squares (``reconstruction="lstsq"``, damping 0.01);
* ``obs <scope> + lstsq``: the ``obs`` metric (structured OBS: the output error a unit's removal leaves once the
  kept inputs are re-fitted, on the pool's covariance) with the ``standardized``, ``layerwise`` or ``global`` scope;
* ``flap counts, obs ranking + lstsq``: FLAP's per-layer counts, each layer's units ranked by ``obs``.

    python benchmarks/selection.py            # 20, 30, 40 % (about 15 min on one shared core)
    python benchmarks/selection.py --search-seeds 3   # and the default search (16 trials) at each ratio and seed
    python benchmarks/selection.py --search-seeds 3 --generations 16   # and the search + the allocation stage
    python benchmarks/selection.py --search-seeds 1 --train-candidates 4 --defaults cold kl fixed-scope no-lstsq

The "default search" rows (``--search-seeds``) are the library's default Bayesian search alone (its stages off:
``generations=0``), run from a fresh copy of the dense weights, the plan applied physically with its least-squares
statistics (what is exported) and scored on the same development windows. With ``--generations`` the same search
is followed by the per-layer allocation stage (``search.allocation``, KL fitness on the objective windows; on by
default since these rows chose it), with ``--block-removal`` also with whole-block removal, with
``--train-candidates`` by the training-aware stage: these cells resume the search's trace (``--traces``), so they
pay only for the stage, and the rows of a seed differ only by it. ``--defaults`` runs the search alone with one
default changed (warm start off, KL objective, scope not searched, no least squares), each on its own trace.

Every least-squares repair fits on the pool and ``--reconstruction-windows`` more calibration windows (the library's
default, 96); ``--reconstruction-windows 0`` repairs on the pool alone, as the library did before those windows.

Results: ``benchmarks/results/selection_windows.{json,md}`` (a rerun skips the finished cells; a results file refuses
cells of another ``--reconstruction-windows``); ``benchmarks/results/selection.{json,md}``: the same with
``--reconstruction-windows 0 --out benchmarks/results/selection``.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.masking import masked
from adapruner_lightning.core.physical import apply_plan
from adapruner_lightning.core.selection import layer_counts, select_counts
from adapruner_lightning.core.session import Candidate, PruningSession
from adapruner_lightning.data.calibration import make_splits
from adapruner_lightning.data.models import load_model
from adapruner_lightning.data.text import texts_for, write_text_atomic
from adapruner_lightning.evaluation.metrics import evaluate_perplexity
from adapruner_lightning.search.allocation import AllocationConfig
from adapruner_lightning.search.config import SearchConfig, SearchData
from adapruner_lightning.search.runner import run_search

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import claimed, machine_info, recover  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "selection_windows"
POOL, DEV = 64, 96
FLAP = dict(metric="flap_reference", reducer="sum", scope="standardized")
#: variant -> (candidate options, reconstruction, FLAP's counts?)
VARIANTS = {
    "flap + bias": (FLAP, "bias", False),
    "flap + lstsq": (FLAP, "lstsq", False),
    "obs standardized + lstsq": (dict(metric="obs", reducer="sum", scope="standardized"), "lstsq", False),
    "obs layerwise + lstsq": (dict(metric="obs", reducer="sum", scope="layerwise"), "lstsq", False),
    "obs global + lstsq": (dict(metric="obs", reducer="sum", scope="global"), "lstsq", False),
    "flap counts, obs ranking + lstsq": (dict(metric="obs", reducer="sum", scope="layerwise"), "lstsq", True),
}
#: the library's default Bayesian search (``SearchConfig(allocation=AllocationConfig(generations=0))``: 16 trials,
#: warm-started, without the stages that follow it), applied physically as exported
SEARCH = "default search (seed {})"
#: the same search followed by a stage: variant -> (its SearchConfig options from the arguments; whether it runs)
STAGES = {
    "default search + allocation (seed {})": (
        lambda a: {"generations": a.generations, "offspring": a.offspring}, lambda a: a.generations > 0),
    "default search + allocation, blocks (seed {})": (
        lambda a: {"generations": a.generations, "offspring": a.offspring, "block_removal": True},
        lambda a: a.generations > 0 and a.block_removal),
    "default search + training-aware (seed {})": (
        lambda a: {"train_candidates": a.train_candidates, "train_steps": a.train_steps},
        lambda a: a.train_candidates > 0),
}
#: the search with one default changed (``--defaults``): variant -> (name, SearchConfig options); each keeps its
#: own trace (a different search problem)
DEFAULTS = {
    "cold": ("search, cold start (seed {})", {"warm_start": []}),
    "kl": ("search, KL objective (seed {})", {"objective": "kl"}),
    "fixed-scope": ("search, scope not searched (seed {})", {"scope": False}),
    "no-lstsq": ("search, no least squares (seed {})", {"reconstructions": ["none", "bias"]}),
}
#: the recovery the training-aware cells compare plans after (the recipe's: full fine-tuning, LM loss, 30 steps)
RECOVERY, RECOVERY_STEPS = "full-lm", 30


class Bench:
    """The dense model, the pool, the development windows and one session's statistics and Grams, shared;
    ``windows``: the reconstruction windows every repair fits on beside the pool (the first ``windows`` fine-tune
    windows, as ``search.data.reconstruction_windows`` in the library; 0: the pool alone)."""

    def __init__(self, windows: int = 0) -> None:
        self.model, tokenizer = load_model(None)
        self.splits = make_splits(tokenizer, texts_for("austen:calibration"), n_pool=POOL, pool_seq_len=128,
                                  n_objective=8, objective_seq_len=256, seed=0, n_dev=DEV)
        self.windows = self.splits.reconstruction(windows) if windows else None
        self.shared: PruningSession | None = None

    def session(self, ratio: float, reconstruction: str) -> PruningSession:
        session = PruningSession(self.model, PruningConfig(target_ratio=ratio, reconstruction=reconstruction),
                                 self.splits.pool, objective_windows=self.splits.objective,
                                 pool_ids=self.splits.pool_ids, progress=False,
                                 stats=self.shared.stats if self.shared else None,
                                 grams=self.shared.grams if self.shared else None,
                                 reconstruction_windows=self.windows)
        self.shared = self.shared or session
        return session

    def _searched(self, ratio: float, seed: int, trace: Path, stage: dict | None) -> tuple[torch.nn.Module, Any]:
        """A copy of the dense weights pruned by the default search (+ ``stage``'s options; the search itself
        resumed from ``trace``) as exported, and the search's result."""
        model = copy.deepcopy(self.model)
        session = PruningSession(model, PruningConfig(target_ratio=ratio, seed=seed), self.splits.pool,
                                 objective_windows=self.splits.objective, pool_ids=self.splits.pool_ids,
                                 progress=False, stats=self.session(ratio, "lstsq").stats, grams=self.shared.grams,
                                 reconstruction_windows=self.windows)
        options = {"generations": 0, **(stage or {})}  # the Bayesian search alone unless a stage is asked for
        result = run_search(session, SearchConfig.of(**options), seed=seed, progress=False, trace_path=trace)
        return apply_plan(model, result.plan, refit=result.refit), result

    def dev_ppl(self, model: torch.nn.Module) -> float:
        """Perplexity of the development windows."""
        return evaluate_perplexity(model, self.splits.dev, batch_size=8, progress=False)

    def recovered_ppl(self, model: torch.nn.Module, seed: int) -> float:
        """Dev perplexity after the default recovery (:data:`RECOVERY`, the fine-tune windows, ``seed``)."""
        return self.dev_ppl(recover(model, self.splits.finetune, RECOVERY_STEPS, seed, RECOVERY))

    def search(self, ratio: float, seed: int, trace: Path, stage: dict | None = None) -> dict:
        """The default search's plan (+ ``stage``) scored on the development windows; a training-aware cell also
        scores its plan and the search's own best after the default recovery."""
        model, result = self._searched(ratio, seed, trace, stage)
        chose = "/".join(str(result.plan.provenance.get(k)) for k in ("metric", "scope", "reconstruction"))
        row = {"dev_ppl": self.dev_ppl(model), "objective_ppl": math.exp(-result.best.score),
               "search_seconds": result.seconds, "chose": chose}
        if (stage or {}).get("objective") == "kl":
            row["objective_ppl"] = None  # its score is the KL, not a perplexity
        if "training_aware" in result.extra:
            info = row["training_aware"] = {k: v for k, v in result.extra["training_aware"].items()}
            row["recovered_dev_ppl"] = self.recovered_ppl(model, seed)
            row["search_recovered_dev_ppl"] = (row["recovered_dev_ppl"] if info["chose"] == info["trials"][0] else
                                               self.recovered_ppl(self._searched(ratio, seed, trace, None)[0], seed))
            row["objective_ppl"] = None  # the stage ranks after training, reported in "training_aware"
        if "allocation" in result.extra:
            info = result.extra["allocation"]
            row["allocation"] = {k: info[k] for k in ("start", "kl_seeds", "kl", "improvements", "evaluations",
                                                      "seconds", "removed_blocks") if k in info}
            row["objective_ppl"] = None  # the stage ranks by KL, reported in "allocation"
        return row

    def cell(self, ratio: float, variant: str) -> dict:
        options, reconstruction, flap_counts = VARIANTS[variant]
        session = self.session(ratio, reconstruction)
        start = time.perf_counter()
        candidate = Candidate(subset=list(range(POOL)), reconstruction=reconstruction, **options)
        if flap_counts:
            flap = session.select(Candidate(subset=list(range(POOL)), **FLAP))
            counts = {i: layer_counts(session.layers[i], s, session.attention_unit) for i, s in flap.items()}
            selection = select_counts(session.layers, session.unit_scores(candidate), counts, session.attention_unit)
        else:
            selection = session.select(candidate)
        compensation = session.compensation(candidate, selection)
        seconds = time.perf_counter() - start
        with masked(session.layers, selection, compensation):
            ppl = evaluate_perplexity(self.model, self.splits.dev, batch_size=8, progress=False)
        return {"dev_ppl": ppl, "objective_ppl": math.exp(-session.score(selection, compensation)),
                "select_seconds": seconds}


def _stage_variant(template: str, args: argparse.Namespace) -> str:
    """A stage's variant name template; an allocation stage of another length than the library's default names its
    generations (a longer stage is a variant of its own, its rows beside the default's)."""
    if "allocation" in template and args.generations != AllocationConfig.generations:
        return template.replace(" (seed", f", {args.generations} generations (seed")
    return template


def _family(variant: str) -> str:
    """A searched variant's name without its seed."""
    return variant.rsplit(" (seed", 1)[0]


def table(data: dict) -> str:
    """Dev perplexity per variant and ratio, its ratio to FLAP + lstsq's, and that ratio on the objective windows;
    a searched variant's row is its mean over seeds (± the spread across seeds when there are several)."""
    ratios = sorted({r["ratio"] for r in data["rows"] if r["ratio"] > 0})
    base = {r["ratio"]: r for r in data["rows"] if r["variant"] == "flap + lstsq"}
    groups: dict[tuple[float, str], list[dict]] = {}
    for r in data["rows"]:
        if r["ratio"] > 0:
            groups.setdefault((r["ratio"], _family(r["variant"])), []).append(r)
    lines = ["| variant | " + " | ".join(f"{r:.0%}: dev ppl | x lstsq | objective x lstsq" for r in ratios) + " |",
             "|---" + "|---:|---:|---:" * len(ratios) + "|"]
    families = [*VARIANTS, *sorted({_family(r["variant"]) for r in data["rows"] if " (seed " in r["variant"]})]
    for family in families:
        cells = []
        for ratio in ratios:
            rows, b = groups.get((ratio, family), []), base.get(ratio)
            if not rows or not b:
                cells.append("- | - | -")
                continue
            ppl = [r["dev_ppl"] for r in rows]
            spread = f" ± {statistics.stdev(ppl):.2f} (n={len(ppl)})" if len(ppl) > 1 else ""
            obj = [r["objective_ppl"] for r in rows if r.get("objective_ppl")]
            cells.append(f"{statistics.mean(ppl):.2f}{spread} | {statistics.mean(ppl) / b['dev_ppl']:.3f} | "
                         + (f"{statistics.mean(obj) / b['objective_ppl']:.3f}" if len(obj) == len(rows) else "-"))
        chose = sorted({r["chose"] for r in data["rows"] if _family(r["variant"]) == family and "chose" in r})
        lines.append(f"| {family}{' → ' + ', '.join(chose) if chose else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: the ablation: row label -> the searched variant family it reads
ABLATION = {
    "default: search + allocation stage": "default search + allocation",
    "allocation stage off (the search alone)": "default search",
    "allocation stage and least squares off": "search, no least squares",
    "allocation stage off, training-aware stage on": "default search + training-aware",
    "FLAP's selection + least squares (no search)": "flap + lstsq",
    "FLAP's reference procedure (bias)": "flap + bias",
}


def _seed(variant: str) -> int | None:
    """The seed in a searched variant's name (None: a fixed selection)."""
    return int(variant.rsplit(" ", 1)[-1].rstrip(")")) if " (seed " in variant else None


def ablation_table(data: dict) -> str:
    """Each new part switched off in turn: mean dev ppl over the seeds the default was run with (n; a fixed
    selection has one value) and its ratio to the default's mean over the same seeds."""
    ratios = sorted({r["ratio"] for r in data["rows"] if r["ratio"] > 0})
    ppl: dict[tuple[float, str], dict[int | None, float]] = {}
    for r in data["rows"]:
        ppl.setdefault((r["ratio"], _family(r["variant"])), {})[_seed(r["variant"])] = r["dev_ppl"]
    lines = ["| variant | " + " | ".join(f"{r:.0%}: dev ppl (n) | x default" for r in ratios) + " |",
             "|---" + "|---:|---:" * len(ratios) + "|"]
    first = next(iter(ABLATION.values()))
    for label, family in ABLATION.items():
        cells = []
        for ratio in ratios:
            default, mine = ppl.get((ratio, first), {}), ppl.get((ratio, family), {})
            seeds = [s for s in default if s in mine] if None not in mine else list(default)
            if not seeds:
                cells.append("- | -")
                continue
            values = [mine[s] for s in seeds] if None not in mine else [mine[None]]
            ratio_text = statistics.mean(values) / statistics.mean(default[s] for s in seeds)
            cells.append(f"{statistics.mean(values):.2f} ({len(values)}) | {ratio_text:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stage_table(data: dict) -> str:
    """Per ratio and seed: the search alone against the search followed by each stage (dev ppl; the allocation
    stage's KL on the objective windows from its start to its end; the training-aware stage's pick and both plans
    after the default recovery)."""
    rows = {(r["ratio"], r["variant"]): r for r in data["rows"]}
    lines = ["| ratio | seed | stage | dev ppl: search | with stage | ratio | stage detail | stage s |",
             "|---:|---:|---|---:|---:|---:|---|---:|"]
    for (ratio, variant), row in sorted(rows.items()):
        if not variant.startswith("default search +"):
            continue
        seed = int(variant.split()[-1].rstrip(")"))
        base = rows.get((ratio, SEARCH.format(seed)), {}).get("dev_ppl")
        stage = variant.split("(")[0].replace("default search + ", "").strip()
        if "allocation" in row:
            a = row["allocation"]
            blocks = a.get("removed_blocks")
            removed = "" if blocks is None else (", whole blocks: " + "; ".join(
                f"{kind} of layers {', '.join(map(str, layers))}" for kind, layers in blocks.items() if layers)
                if any(blocks.values()) else ", no whole block removed")
            detail = (f"KL {a['kl_seeds'][a['start']]:.4f} ({a['start']}) → {a['kl']:.4f}, "
                      f"{a['improvements']} steps up{removed}")
            seconds = a["seconds"]
        else:
            t = row["training_aware"]
            detail = (f"trials {t['trials']} → {t['chose']}; after {RECOVERY_STEPS} recovery steps: search "
                      f"{row['search_recovered_dev_ppl']:.2f}, stage {row['recovered_dev_ppl']:.2f}")
            seconds = t["seconds"]
        ratio_text = f"{row['dev_ppl'] / base:.3f}" if base else "-"
        lines.append(f"| {ratio:.0%} | {seed} | {stage} | {base or float('nan'):.2f} | {row['dev_ppl']:.2f} | "
                     f"{ratio_text} | {detail} | {seconds:.0f} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def render(data: dict) -> str:
    """The results file: what was measured, how, and :func:`table`."""
    m = data["machine"]
    dense = next((r["dev_ppl"] for r in data["rows"] if r["variant"] == "dense"), float("nan"))
    return ("# Which units to remove once the kept weights are repaired — development data only\n\n"
            f"{m['date']} — {m['cpu_model']}, torch {m['torch']}, 1 thread. Commands: "
            f"{', '.join(f'`{c}`' for c in data.get('commands', [m['command']]))}. Embedded "
            f"SmolLM2-135M (float32); pool 64 x 128 tokens of the calibration novels (seed 0); dev = their {DEV} "
            f"held-back windows of 256 tokens (quality.py's development split). Every least-squares repair fits on "
            + (f"the pool and {windows} reconstruction windows of 256 tokens (the first fine-tune windows, the "
               "library's default). " if (windows := data.get("reconstruction_windows", 0)) else "the pool alone. ")
            + f"Dense dev ppl **{dense:.2f}**. "
            "Evaluation novels and task splits: not read. x lstsq: the ratio to FLAP's selection with the same repair; "
            "objective x lstsq: the same ratio on the search's 8 objective windows (what a search ranks by).\n\n"
            + table(data) + "\n" + (f"\n## The stages after the search (paired by seed)\n\n{stages}\n"
                                     if (stages := stage_table(data)) else ""))


def _finished(path: Path, ratio: float, variant: str) -> bool:
    """Whether the results file on disk holds the cell (another run may have written it since this one began)."""
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    return any((r["ratio"], r["variant"]) == (ratio, variant) and ("objective_ppl" in r or variant == "dense")
               for r in rows)


def _save(path: Path, row: dict, machine: dict, windows: int) -> dict:
    """Add ``row`` to the results file as it is on disk now (other runs may write beside this one, each holding
    the lock while it reads and writes), record this run's command, rewrite the .md; return the data."""
    with open(path.with_suffix(".lock"), "a") as lock:  # never truncates a file of that name
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {"rows": [], "reconstruction_windows": windows}
        data["rows"] = [r for r in data["rows"] if (r["ratio"], r["variant"]) != (row["ratio"], row["variant"])]
        data["rows"].append({**row, "date": machine["date"]})
        data["commands"] = sorted({*data.get("commands", []), machine["command"]})
        data["machine"] = machine
        write_text_atomic(path, json.dumps(data, indent=1))
        write_text_atomic(path.with_suffix(".md"), render(data))
    return data


def _is_search(variant: str) -> bool:
    """Whether ``variant`` is a searched cell (it runs or resumes a search trace)."""
    return variant.startswith(("default search", "search, "))


def _searched_trace(args: argparse.Namespace, ratio: float, variant: str) -> tuple[Path, dict | None]:
    """A searched cell's trace (the search's, which its stage cells resume; a changed default's own) and the
    options of its stage or changed default (None: the search alone)."""
    seed = _seed(variant)
    options = next((opts(args) for v, (opts, _) in STAGES.items() if _stage_variant(v, args).format(seed) == variant),
                   None)
    changed = next((d for d, (v, _) in DEFAULTS.items() if v.format(seed) == variant), None)
    trace = Path(args.traces) / f"r{ratio}_s{seed}{'_' + changed if changed else ''}.jsonl"
    return trace, DEFAULTS[changed][1] if changed else options


def _run_cell(bench: Bench, args: argparse.Namespace, ratio: float, variant: str) -> dict:
    """One cell's row: the dense model's dev perplexity, a searched cell or a fixed selection."""
    if variant == "dense":
        return {"dev_ppl": bench.dev_ppl(bench.model)}
    if _is_search(variant):
        trace, options = _searched_trace(args, ratio, variant)
        return bench.search(ratio, _seed(variant), trace, options)
    return bench.cell(ratio, variant)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.3, 0.4])
    p.add_argument("--search-seeds", type=int, default=0, help="also run the default search with this many seeds")
    p.add_argument("--search-ratios", type=float, nargs="+", default=None, help="ratios of the searches (default: --ratios)")
    p.add_argument("--generations", type=int, default=0,
                   help="also run each search followed by the allocation stage of this many generations")
    p.add_argument("--offspring", type=int, default=8, help="the allocation stage's offspring per generation")
    p.add_argument("--block-removal", action="store_true", help="and the stage with whole-block removal too")
    p.add_argument("--train-candidates", type=int, default=0,
                   help="also run each search followed by the training-aware stage over this many plans")
    p.add_argument("--train-steps", type=int, default=10, help="the training-aware stage's steps per plan")
    p.add_argument("--defaults", nargs="*", default=[], choices=list(DEFAULTS),
                   help="also run the search with one default changed, at each search ratio and seed: the warm start "
                        "off, the KL objective, the scope not searched, no least-squares repair in the space")
    p.add_argument("--reconstruction-windows", type=int, default=SearchData.reconstruction_windows,
                   help="calibration windows every least-squares repair fits on beside the pool (default: the "
                        "library's search.data.reconstruction_windows; 0: the pool alone, as results/selection)")
    p.add_argument("--traces", default=None,
                   help="directory of the searches' traces (the allocation cells resume them; default: --out "
                        "followed by _traces)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    path = Path(args.out).with_suffix(".json")
    args.traces = args.traces or str(path.with_suffix("")) + "_traces"
    data = json.loads(path.read_text()) if path.exists() else {"rows": [], "reconstruction_windows": args.reconstruction_windows}
    held = data.get("reconstruction_windows", 0)  # a file from before the windows: the pool alone
    if held != args.reconstruction_windows:
        raise SystemExit(f"selection.py: {path} holds cells repaired with {held} reconstruction windows, not "
                         f"{args.reconstruction_windows}: pass --reconstruction-windows {held} or another --out")
    done = {(r["ratio"], r["variant"]) for r in data["rows"] if "objective_ppl" in r or r["variant"] == "dense"}
    data["rows"] = [r for r in data["rows"] if (r["ratio"], r["variant"]) in done]  # rows of an older run: again
    bench = None
    cells = [(0.0, "dense")] + [(r, v) for r in args.ratios for v in VARIANTS]
    for r in args.search_ratios or args.ratios:
        for seed in range(args.search_seeds):
            cells += [(r, SEARCH.format(seed))] + [(r, _stage_variant(v, args).format(seed))
                                                    for v, (_, on) in STAGES.items() if on(args)]
            cells += [(r, DEFAULTS[d][0].format(seed)) for d in args.defaults]
    claims = path.parent / (path.stem + "_claims")
    for ratio, variant in cells:
        if (ratio, variant) in done or _finished(path, ratio, variant):  # here, or by a run beside this one
            continue
        with claimed(claims, _searched_trace(args, ratio, variant)[0].stem if _is_search(variant) else
                     f"{ratio}|{variant}") as mine:
            if not mine or _finished(path, ratio, variant):  # a sitting beside this one runs it (or its trace)
                print(f"{ratio} {variant}: run by another sitting; skipped", flush=True)
                continue
            bench = bench or Bench(args.reconstruction_windows)
            row = _run_cell(bench, args, ratio, variant)
        data = _save(path, {"ratio": ratio, "variant": variant, **row}, machine_info(torch.device("cpu")),
                     args.reconstruction_windows)
        print(json.dumps(data["rows"][-1]), flush=True)
    print(render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
