"""Least-squares reconstruction of the kept weights (``reconstruction: lstsq``) on the embedded model, on
development data only.

Data: the embedded SmolLM2-135M (float32); pool 64 x 128 tokens and 8 x 256 objective windows of the four
calibration novels (``make_splits(..., n_pool=64, pool_seq_len=128, n_objective=8, objective_seq_len=256,
seed=0)``, as ``benchmarks/quality.py`` and ``benchmarks/subsets.py``); every figure is the perplexity of the
development windows of ``benchmarks/subsets.py`` (the last ``--dev-windows`` = 24 fine-tune windows of 256 tokens of
the calibration novels, which no search, objective or recovery reads; the same function, mirrored here), never of
the evaluation novels or a standard task. Three parts (``--parts``):

* ``direct``: FLAP's reference selection (``flap_reference``, standardized, its 2,048 samples = the whole pool) at
  each ratio with every way to make up for the removed channels: none, FLAP's bias, and least squares with dense
  inputs on the pool's Gram at several dampings, without the intercept, and with *sequential* inputs (each layer
  fitted on the inputs of the model pruned and re-fitted so far, SparseGPT-style: the Gram of every layer depends on
  the candidate, so it costs one pass over the pool per trial).
* ``subset``: FLAP on ``k = 10`` random samples (3 draws, 20 %): the least-squares Gram of the candidate's 10 samples
  against the whole pool's (per-sample Grams cannot be cached at 8B, so a per-candidate Gram costs a pass per trial).
* ``search``: the library's default search (``SearchConfig()``: 16 trials, reconstruction none|bias|lstsq searched)
  against FLAP + its bias and FLAP + least squares, at each ratio and ``--seeds`` search seeds; optionally
  (``--methods ... search_bias``) the search without ``lstsq`` (the space before it) and ``search_alloc``, the
  default search followed by the per-layer allocation stage (``--generations`` x ``--offspring``). Each plan is applied
  physically to a fresh copy of the dense model (what is exported) and scored on the development windows; wall
  times of the search and of FLAP's prune (statistics + selection + compensation + physical prune) are measured
  in the same run.

Cells are appended to ``<out>.json`` as they finish (a rerun skips them) and the tables re-rendered into
``<out>.md``.

    python benchmarks/reconstruction.py                         # everything (hours on 2 shared cores)
    python benchmarks/reconstruction.py --parts direct --quick  # 20 % only, three variants
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.masking import masked
from adapruner_lightning.core.physical import apply_plan
from adapruner_lightning.core.reconstruction import (
    DEFAULT_DAMPING,
    MEMBERS,
    Fits,
    GramCache,
    LeastSquares,
    collect_grams,
    solve_fit,
    removed_columns,
    substituted,
)
from adapruner_lightning.core.session import Candidate, PruningSession
from adapruner_lightning.data.calibration import make_splits
from adapruner_lightning.data.models import load_model
from adapruner_lightning.data.text import texts_for
from adapruner_lightning.evaluation.metrics import evaluate_perplexity
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.search.runner import run_search

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (the benchmarks' shared machine description)

RESULTS = Path(__file__).resolve().parent / "results" / "reconstruction"
POOL = 64
FLAP = dict(metric="flap_reference", reducer="sum", scope="standardized")
DAMPINGS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", default=["direct", "subset", "search"], choices=["direct", "subset", "search"])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.3, 0.4])
    p.add_argument("--seeds", type=int, default=3, help="search seeds")
    p.add_argument("--trials", type=int, default=None, help="search trials (default: SearchConfig's)")
    p.add_argument("--methods", nargs="+", default=["flap_bias", "flap_lstsq", "search"],
                   choices=["flap_bias", "flap_lstsq", "search", "search_bias", "search_alloc"])
    p.add_argument("--generations", type=int, default=4, help="search_alloc: generations of the allocation stage")
    p.add_argument("--offspring", type=int, default=8, help="search_alloc: offspring per generation")
    p.add_argument("--dev-windows", type=int, default=24)
    p.add_argument("--quick", action="store_true", help="20 %% only; direct: none, bias, lstsq at the default damping")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--traces", default=None, help="search traces (default: <out>_traces/)")
    return p


def dev_windows(splits, n: int) -> torch.Tensor:
    """The development windows of ``benchmarks/subsets.py``: the last ``n`` fine-tune windows (256 tokens)."""
    return splits.finetune[-n:]


class Bench:
    """The dense model, the pool and objective windows, the development windows, and the pool's statistics."""

    def __init__(self, dev: int) -> None:
        self.model, tokenizer = load_model(None)
        self.splits = make_splits(tokenizer, texts_for("austen:calibration"), n_pool=POOL, pool_seq_len=128,
                                  n_objective=8, objective_seq_len=256, seed=0)
        self.dev = dev_windows(self.splits, dev)
        self.base = self.session(0.2)
        self._grams: GramCache | None = None

    def session(self, ratio: float, model: torch.nn.Module | None = None, seed: int = 0, share: bool = True,
                **config: Any) -> PruningSession:
        """A session on the pool, on ``model`` (a copy of the dense weights; default the dense model itself),
        sharing the first session's statistics and Gram matrices unless ``share`` is off (timed cells)."""
        base = getattr(self, "base", None) if share else None
        return PruningSession(model or self.model, PruningConfig(target_ratio=ratio, seed=seed, **config),
                              self.splits.pool, objective_windows=self.splits.objective, pool_ids=self.splits.pool_ids,
                              progress=False, stats=base.stats if base is not None else None,
                              grams=self._grams if base is not None else None)

    @property
    def grams(self) -> GramCache:
        if self._grams is None:
            self._grams = self.base.grams
        return self._grams

    def dev_ppl(self, selection=None, compensation=None, model: torch.nn.Module | None = None) -> float:
        with masked(self.base.layers, selection or {}, compensation):
            return evaluate_perplexity(model or self.model, self.dev, batch_size=8, progress=False)


# ----------------------------------------------------------------------------------------------------- direct

def direct_variants(quick: bool) -> list[str]:
    if quick:
        return ["none", "bias", f"lstsq d={DEFAULT_DAMPING:g}"]
    return ["none", "bias", *[f"lstsq d={d:g}" for d in DAMPINGS], f"lstsq d={DEFAULT_DAMPING:g} no intercept",
            f"lstsq d={DEFAULT_DAMPING:g} sequential"]


def direct(bench: Bench, ratio: float, variant: str) -> dict[str, Any]:
    """FLAP's reference selection on the whole pool, with ``variant``'s compensation, on the dev windows."""
    session = bench.session(ratio)
    candidate = Candidate(subset=list(range(POOL)), **FLAP)
    selection = session.select(candidate)
    gram_start = time.perf_counter()
    if variant.startswith("lstsq") and "sequential" not in variant:
        bench.grams  # the pool's Gram pass, once, timed apart from the fits
    start = time.perf_counter()
    row = {"gram_seconds": start - gram_start} if start - gram_start > 1 else {}
    if variant == "none":
        compensation = None
    elif variant == "bias":
        compensation = session.compensation(Candidate(subset=list(range(POOL)), reconstruction="bias", **FLAP), selection)
    else:
        damping = float(variant.split()[1][2:])
        if "sequential" in variant:
            compensation = sequential_fits(bench, selection, damping)
        else:
            refit = LeastSquares(bench.grams, damping=damping, intercept="no intercept" not in variant)
            compensation = refit.fit(session.layers, selection)
    fit_seconds = time.perf_counter() - start
    return {**row, "dev_ppl": bench.dev_ppl(selection, compensation), "fit_seconds": fit_seconds}


def sequential_fits(bench: Bench, selection, damping: float) -> Fits:
    """Each layer's fits on the inputs of the model pruned and re-fitted up to it (o_proj first, then down_proj on
    the inputs its re-fitted attention gives): the decoder layers run one at a time on the pool's cached hidden
    states (3 layer passes per layer), the Grams in float32 as :func:`collect_grams`."""
    model, layers = bench.model, bench.base.layers
    decoder = model.get_decoder()
    batches = _layer_inputs(model, bench.splits.pool)
    fits: dict[int, dict] = {}
    with torch.no_grad():
        for i, block in enumerate(decoder.layers):
            sel = selection.get(i)
            for member in MEMBERS:
                if sel is None or not removed_columns(layers[i], sel, member):
                    continue
                mean, second = _layer_moments(block, batches, getattr(layers[i], member), layers, fits)
                fits.setdefault(i, {})[member] = solve_fit(mean, second, removed_columns(layers[i], sel, member),
                                                           damping=damping)
            with substituted(layers, {i: fits[i]} if i in fits else {}):
                batches = [(_hidden(block(h, **kw)), kw) for h, kw in batches]
    return Fits(fits)


def _hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class _Stop(Exception):
    pass


def _layer_inputs(model, pool: torch.Tensor, batch_size: int = 8) -> list[tuple[torch.Tensor, dict]]:
    """The first decoder layer's input hidden states and keyword arguments, per batch of the pool."""
    captured: list[tuple[torch.Tensor, dict]] = []

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden.detach(), {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _Stop

    handle = model.get_decoder().layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for start in range(0, pool.shape[0], batch_size):
                try:
                    model(input_ids=pool[start:start + batch_size], use_cache=False)
                except _Stop:
                    pass
    finally:
        handle.remove()
    return captured


def _layer_moments(block, batches, module, layers, fits) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and ``E[x x^T]`` of ``module``'s inputs when ``block`` runs on ``batches`` (the fits found so far
    substituted, its own o_proj's among them once fitted)."""
    d = module.in_features
    sums = {"n": 0, "sum": torch.zeros(d), "xx": torch.zeros(d, d)}

    def hook(mod, args):
        x = args[0].reshape(-1, d).float()
        sums["n"] += x.shape[0]
        sums["sum"] += x.sum(0)
        sums["xx"].addmm_(x.T, x)

    handle = module.register_forward_pre_hook(hook)
    try:
        with substituted(layers, fits):
            for hidden, kwargs in batches:
                block(hidden, **kwargs)
    finally:
        handle.remove()
    return sums["sum"] / sums["n"], sums["xx"] / sums["n"]


# ----------------------------------------------------------------------------------------------------- subset

def subset_cell(bench: Bench, draw: int) -> dict[str, Any]:
    """FLAP on 10 random samples (draw ``draw``): bias, least squares on the pool's Gram and on the subset's."""
    subset = sorted(np.random.RandomState(1000 + draw).choice(POOL, 10, replace=False).tolist())
    session = bench.session(0.2)
    selection = session.select(Candidate(subset=subset, **FLAP))
    own = collect_grams(bench.model, session.layers, bench.splits.pool[subset])
    return {"subset": subset,
            "bias": bench.dev_ppl(selection, session.compensation(Candidate(subset=subset, reconstruction="bias", **FLAP),
                                                                  selection)),
            "lstsq_pool": bench.dev_ppl(selection, LeastSquares(bench.grams).fit(session.layers, selection)),
            "lstsq_subset": bench.dev_ppl(selection, LeastSquares(own).fit(session.layers, selection))}


# ----------------------------------------------------------------------------------------------------- search

def search_cell(bench: Bench, method: str, ratio: float, seed: int, trials: int | None, generations: int = 4,
                offspring: int = 8, traces: Path | None = None) -> dict[str, Any]:
    """``method``'s plan from a session on a copy of the dense weights, applied to it and scored on the dev windows.
    Seed 0 of FLAP and of the search runs its own statistics passes, so that its wall time is whole (``timed``: the
    times the table compares); the other cells share the bench's statistics. ``search`` and ``search_alloc`` of a
    (ratio, seed) share one trace under ``traces``: the latter resumes the former's trials (same problem) and adds
    only the allocation stage, whose own time is ``allocation.seconds``."""
    model = copy.deepcopy(bench.model)
    timed = seed == 0 and method in ("flap_bias", "flap_lstsq", "search")  # its own statistics passes, timed whole
    if not timed and bench._grams is None:
        bench.grams  # shared by the cells that are not timed
    start = time.perf_counter()
    row: dict[str, Any] = {"timed": timed}
    if method.startswith("flap"):
        session = bench.session(ratio, model=model, seed=seed, share=not timed, num_samples=2048,
                                reconstruction=method.split("_")[1], **FLAP)
        plan = session.plan(session.default_candidate())
    else:
        space = {"search_bias": {"reconstructions": ["none", "bias"]},
                 "search_alloc": {"generations": generations, "offspring": offspring}}.get(method, {})
        config = SearchConfig.of(**({"trials": trials} if trials else {}), **space)
        session = bench.session(ratio, model=model, seed=seed, share=not timed)
        trace = traces / f"{ratio}_{seed}.jsonl" if traces and method in ("search", "search_alloc") else None
        result = run_search(session, config, seed=seed, progress=False, trace_path=trace)
        plan = result.plan
        if "allocation" in result.extra:
            row["allocation"] = {k: v for k, v in result.extra["allocation"].items() if k != "counts"}
        row.update(search_seconds=result.seconds, stats_seconds=result.stats_seconds, trials=len(result.trials),
                   best_trial=result.best.trial, objective_ppl=math.exp(-result.best.score),
                   lstsq_trials=sum(t.candidate.get("reconstruction") == "lstsq" for t in result.trials))
    refit = session.least_squares if plan.refits_weights else None
    session.release()
    apply_plan(model, plan, refit=refit)
    row["prune_seconds"] = time.perf_counter() - start
    row.update(removed=plan.achieved_ratio, dev_ppl=evaluate_perplexity(model, bench.dev, batch_size=8, progress=False),
               plan={k: plan.provenance.get(k) for k in ("metric", "reducer", "scope", "keep_first", "keep_last",
                                                          "layer_ramp", "reconstruction")},
               samples=len(plan.provenance.get("subset", [])))
    return row


# ----------------------------------------------------------------------------------------------------- driver

def cells(args) -> list[tuple]:
    ratios = [0.2] if args.quick else args.ratios
    out: list[tuple] = [("dense",)]
    if "direct" in args.parts:
        out += [("direct", r, v) for r in ratios for v in direct_variants(args.quick)]
    if "subset" in args.parts:
        out += [("subset", d) for d in range(1 if args.quick else 3)]
    if "search" in args.parts:
        for r in ratios:
            for m in args.methods:
                out += [("search", m, r, s) for s in (range(args.seeds) if m.startswith("search") else range(1))]
    return out


def run_cell(bench: Bench, cell: tuple, args) -> dict[str, Any]:
    if cell[0] == "dense":
        return {"dev_ppl": bench.dev_ppl()}
    if cell[0] == "direct":
        return direct(bench, cell[1], cell[2])
    if cell[0] == "subset":
        return subset_cell(bench, cell[1])
    traces = Path(args.traces) if args.traces else Path(args.out).parent / f"{Path(args.out).name}_traces"
    traces.mkdir(parents=True, exist_ok=True)
    return search_cell(bench, cell[1], cell[2], cell[3], args.trials, args.generations, args.offspring, traces)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    path = out.with_suffix(".json")
    data = json.loads(path.read_text()) if path.exists() else {"rows": []}
    done = {tuple(r["cell"]) for r in data["rows"]}
    data["machine"] = speed.machine_info(torch.device("cpu"))
    bench = None
    for cell in cells(args):
        if tuple(cell) in done:
            continue
        if bench is None:
            bench = Bench(args.dev_windows)
        start = time.perf_counter()
        row = {"cell": list(cell), **run_cell(bench, cell, args), "seconds": time.perf_counter() - start,
               "date": speed.machine_info(torch.device("cpu"))["date"]}
        data["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "subset"}), flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1))
        out.with_suffix(".md").write_text(render(data))
    out.with_suffix(".md").write_text(render(data))
    print(render(data))
    return 0


def _rows(data: dict, kind: str) -> list[dict]:
    return [r for r in data["rows"] if r["cell"][0] == kind]


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def render(data: dict) -> str:
    """The Markdown tables of what has finished."""
    m = data.get("machine", {})
    dense = next((r["dev_ppl"] for r in _rows(data, "dense")), float("nan"))
    lines = ["# Least-squares reconstruction — development data only", "",
             f"{m.get('date', '?')} — {m.get('cpu_model', '?')}, {m.get('cpu_affinity', '?')} cores shared with other "
             f"jobs, torch {m.get('torch', '?')}, 1 thread. Command: `{m.get('command', '?')}`. Embedded SmolLM2-135M "
             "(float32); pool 64 x 128 tokens of the calibration novels (seed 0); dev = the last 24 x 256 fine-tune "
             f"windows of the calibration novels (as benchmarks/subsets.py; no search, objective or recovery reads "
             f"them). Dense dev ppl **{dense:.2f}**. Evaluation novels and task splits: not read.", ""]
    lines += _render_direct(data, dense) + _render_subset(data) + _render_search(data, dense) + _render_allocation(data)
    return "\n".join(lines) + "\n"


def _render_direct(data: dict, dense: float) -> list[str]:
    rows = _rows(data, "direct")
    if not rows:
        return []
    ratios = sorted({r["cell"][1] for r in rows})
    variants = list(dict.fromkeys(r["cell"][2] for r in rows))
    get = {(r["cell"][1], r["cell"][2]): r for r in rows}
    out = ["## FLAP's reference selection, each compensation (dev ppl; x bias = ratio to FLAP's own bias)", "",
           "| compensation | " + " | ".join(f"{r:.0%}: ppl | x bias" for r in ratios) + " | fit (s, median) |",
           "|---" + "|---:|---:" * len(ratios) + "|---:|"]
    for v in variants:
        cells = []
        for r in ratios:
            row, bias = get.get((r, v)), get.get((r, "bias"))
            cells.append(f"{row['dev_ppl']:.2f} | {row['dev_ppl'] / bias['dev_ppl']:.3f}" if row and bias else "- | -")
        fits = [get[(r, v)]["fit_seconds"] - get[(r, v)].get("gram_seconds", 0.0) for r in ratios if (r, v) in get]
        out.append(f"| {v} | " + " | ".join(cells) + f" | {statistics.median(fits):.1f} |")
    grams = [r.get("gram_seconds", 0.0) for r in rows if r.get("gram_seconds", 0.0) > 1]
    return out + ["", "fit (s, median over the ratios): the fits of every layer (sequential: its passes over the pool "
                  "too), on the shared CPU; the pool's Gram pass, once: "
                  f"{max(grams, default=float('nan')):.0f} s (counted in the first least-squares cell of runs before "
                  "the pass was timed apart).", ""]


def _render_subset(data: dict) -> list[str]:
    rows = _rows(data, "subset")
    if not rows:
        return []
    out = ["## Gram of the candidate's samples or of the whole pool (FLAP on 10 random samples, 20 %, dev ppl)", "",
           "| draw | FLAP bias (its 10 samples) | lstsq, pool Gram (64) | lstsq, its 10 samples' Gram |",
           "|---:|---:|---:|---:|"]
    out += [f"| {r['cell'][1]} | {r['bias']:.2f} | {r['lstsq_pool']:.2f} | {r['lstsq_subset']:.2f} |" for r in rows]
    return out + [""]


def _timed(by: dict[str, list[dict]], method: str) -> float:
    """Wall time of ``method``'s timed cell (seed 0, its own statistics passes); for ``search_alloc``, which resumes
    the search's trials, the search's time plus its seed-0 allocation stage."""
    timed = [r["prune_seconds"] for r in by.get(method, []) if r.get("timed")]
    if timed:
        return timed[0]
    stages = [r["allocation"]["seconds"] for r in by.get(method, []) if "allocation" in r and r["cell"][3] == 0]
    return _timed(by, "search") + stages[0] if stages and method == "search_alloc" else float("nan")


def _render_search(data: dict, dense: float) -> list[str]:
    rows = _rows(data, "search")
    if not rows:
        return []
    out = ["## The default search against FLAP + bias and FLAP + least squares (dev ppl after the physical prune)", "",
           "| ratio | method | seeds | dev ppl | x dense | x FLAP+bias | x FLAP+lstsq | wall time, seed 0 (s) | "
           "x FLAP's prune time | best plans |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for ratio in sorted({r["cell"][2] for r in rows}):
        by = {}
        for r in rows:
            if r["cell"][2] == ratio:
                by.setdefault(r["cell"][1], []).append(r)
        base = {m: statistics.mean(r["dev_ppl"] for r in by[m]) for m in by}
        flap_time = _timed(by, "flap_bias")
        for method, rs in by.items():
            ppl = [r["dev_ppl"] for r in rs]
            secs = _timed(by, method)
            plans = ", ".join(sorted({f"{r['plan']['metric']}/{r['plan']['scope']}/{r['plan']['reconstruction']}"
                                      for r in rs}))
            out.append(f"| {ratio:.0%} | {method} | {len(rs)} | {_ms(ppl)} | {statistics.mean(ppl) / dense:.3f} | "
                       f"{statistics.mean(ppl) / base.get('flap_bias', float('nan')):.3f} | "
                       f"{statistics.mean(ppl) / base.get('flap_lstsq', float('nan')):.3f} | {secs:.0f} | "
                       f"{secs / flap_time:.1f} | {plans} |")
    return out + [""]


def _render_allocation(data: dict) -> list[str]:
    """Per (ratio, seed): the allocation stage's KL (its seeds, its result) and dev ppl against the search alone."""
    rows = [r for r in _rows(data, "search") if r["cell"][1] == "search_alloc"]
    if not rows:
        return []
    plain = {(r["cell"][2], r["cell"][3]): r for r in _rows(data, "search") if r["cell"][1] == "search"}
    out = ["## The allocation stage after the search (paired by seed)", "",
           "| ratio | seed | KL: search's best | KL: FLAP's counts | KL after | improvements | evaluations (low / full) | "
           "stage (s) | dev ppl: search | dev ppl: + stage | ratio |", "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        a, base = r["allocation"], plain.get((r["cell"][2], r["cell"][3]))
        seeds = a["kl_seeds"]
        before = base["dev_ppl"] if base else float("nan")
        out.append(f"| {r['cell'][2]:.0%} | {r['cell'][3]} | {seeds.get('search', float('nan')):.4f} | "
                   f"{seeds.get('flap', float('nan')):.4f} | {a['kl']:.4f} | {a['improvements']} | "
                   f"{a['evaluations']['low']} / {a['evaluations']['full']} | {a['seconds']:.0f} | {before:.2f} | "
                   f"{r['dev_ppl']:.2f} | {r['dev_ppl'] / before:.3f} |")
    return out + [""]


if __name__ == "__main__":
    sys.exit(main())
