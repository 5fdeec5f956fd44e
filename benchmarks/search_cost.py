"""What the AdaPruner search costs, and how that cost grows with the pool and the model.

Measured in one run (CPU or CUDA, whatever runs the script):

1. On the embedded SmolLM2-135M, pool and objective from ``make_splits(tok, texts_for("austen:calibration"),
   n_pool=N, pool_seq_len=128, n_objective=8, objective_seq_len=256, seed)``:

   * the statistics pass (one hooked forward+backward over the pool, activation gradients only) in seconds and
     as a multiple of one plain forward+backward over the same pool (weight gradients, same batches), and the
     peak memory of both above the weights;
   * one objective evaluation (the masked model's perplexity on the objective windows);
   * a search restricted to the metrics with cached statistics (``taylor_vector, wanda_sp, flap``) and one with
     the element-wise ``taylor`` (weight gradients recomputed for each new subset): median trial wall time
     (importance + selection + masked objective, as the trace records it) divided by one objective evaluation
     (target <= 1.3 for cached metrics), and the total search wall time.

2. Pool size N (16/32/64): statistics pass time and peak memory, per-sample cache size, selection time.

3. Model size: randomly initialised Llama configs of SmolLM2's family (vocab 49152, head_dim 64, GQA 3:1,
   tied embeddings) from ~10M to ~500M parameters (hidden size and depth varied): statistics pass, plain
   forward+backward, objective evaluation, trial time and peak memories.

From these numbers the Markdown report derives a paper estimate for 7B and 70B models on one 80 GB GPU.
Results: ``benchmarks/results/search_cost.md`` and ``.json``. Peak memory: see ``bench_common.py`` (``PeakMemory``).

Usage::

    python benchmarks/search_cost.py           # full (about an hour on 2 busy CPU cores)
    python benchmarks/search_cost.py --quick   # N = 16/32, 4 objective windows, 3 small models, fewer trials
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CACHED_METRICS = ["taylor_vector", "wanda_sp", "flap"]

#: Random-init configs of SmolLM2's family (Llama, vocab 49152, head_dim 64, 3 query heads per KV head).
SCALING_CONFIGS: dict[str, dict[str, int]] = {
    "h192-L4": dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=3,
                    num_key_value_heads=1),
    "h384-L12": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=12, num_attention_heads=6,
                     num_key_value_heads=2),
    "h576-L30 (135M shape)": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                  num_attention_heads=9, num_key_value_heads=3),
    "h960-L32 (360M shape)": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                                  num_attention_heads=15, num_key_value_heads=5),
    "h1152-L30": dict(hidden_size=1152, intermediate_size=3072, num_hidden_layers=30, num_attention_heads=18,
                      num_key_value_heads=6),
}
QUICK_SIZES = ["h192-L4", "h384-L12", "h576-L30 (135M shape)"]

from bench_common import PeakMemory, libc, machine_info, timed, write_results  # noqa: E402
from search_cost_report import (  # noqa: E402,F401  (the report's names, re-exported)
    SCALING_VOCAB, TARGETS, cache_floats_per_layer_sample, paper_estimate, render_markdown)


def _free() -> None:
    gc.collect()
    lib = libc()
    if lib is not None:
        lib.malloc_trim(0)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def plain_forward_backward(model: torch.nn.Module, pool: torch.Tensor, batch_size: int) -> None:
    """The reference: forward+backward over ``pool`` in the same batches with weight gradients (then dropped)."""
    from adapruner_lightning.evaluation.logits import backward_summed_nll

    device = next(model.parameters()).device
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        with torch.enable_grad():
            for batch in pool.split(batch_size):
                backward_summed_nll(model, batch.to(device), scale=1.0 / (batch.shape[1] - 1))
    finally:
        for p, flag in flags:
            p.grad = None
            p.requires_grad_(flag)


def warm_up(session: Any) -> None:
    """Run both passes once on two samples so one-time costs (kernel selection, first touches) are not timed."""
    from adapruner_lightning.core.stats import collect_activation_stats

    collect_activation_stats(session.model, session.layers, session.pool[:2], batch_size=2, progress=False)
    plain_forward_backward(session.model, session.pool[:2], 2)
    _free()


def measure_stats(session: Any, device: torch.device) -> dict[str, float]:
    """Time and peak memory of the statistics pass (runs it; the cache stays in the session)."""
    session._stats = None
    _free()
    with PeakMemory(device) as pm:
        seconds = timed(lambda: session.stats, device)
    cache = sum(v.numel() * v.element_size() for layer in session.stats.layers for v in layer.values())
    return {"seconds": seconds, "peak_mib": pm.peak_mib, "cache_mib": cache / 2**20,
            "cache_floats_per_layer_sample": sum(v.numel() for v in session.stats.layers[0].values())
            / session.stats.num_samples}


def measure_stats_and_plain(session: Any, repeats: int, device: torch.device) -> tuple[dict, dict]:
    """Statistics pass and plain forward+backward, ``repeats`` times each in ABBA order (drift cancels in the
    mean); seconds are the mean over repeats, peak memory the largest."""
    runs: dict[str, list[dict]] = {"stats": [], "plain": []}
    for r in range(repeats):
        for what in (("stats", "plain") if r % 2 == 0 else ("plain", "stats")):
            if what == "stats":
                runs["stats"].append(measure_stats(session, device))
            else:
                runs["plain"].append(measure_plain(session.model, session.pool, session.batch_size, device))
    out = []
    for what in ("stats", "plain"):
        first = dict(runs[what][-1])
        first["runs_s"] = [x["seconds"] for x in runs[what]]
        first["seconds"] = statistics.fmean(first["runs_s"])
        first["peak_mib"] = max(x["peak_mib"] for x in runs[what])
        out.append(first)
    return out[0], out[1]


def measure_plain(model: torch.nn.Module, pool: torch.Tensor, batch_size: int, device: torch.device) -> dict[str, float]:
    """Time and peak memory of one plain forward+backward over ``pool``."""
    _free()
    with PeakMemory(device) as pm:
        seconds = timed(lambda: plain_forward_backward(model, pool, batch_size), device)
    _free()
    return {"seconds": seconds, "peak_mib": pm.peak_mib}


def measure_objective(session: Any, repeats: int, device: torch.device) -> dict[str, Any]:
    """Seconds of one objective evaluation (masked model, a fixed taylor_vector selection): one warm-up, then the
    median of ``repeats``."""
    from adapruner_lightning.core.session import Candidate

    k = min(8, session.pool.shape[0])
    selection = session.select(Candidate("taylor_vector", "sum", list(range(k))))
    session.score(selection)  # warm-up, not timed
    times = [timed(lambda: session.score(selection), device) for _ in range(repeats)]
    return {"seconds": times, "median_s": statistics.median(times)}


def measure_select(session: Any, candidates: list[Any], device: torch.device) -> dict[str, Any]:
    """Seconds of importance + selection (no objective) for the given candidates."""
    times = [timed(lambda c=c: session.select(c), device) for c in candidates]
    return {"seconds": times, "median_s": statistics.median(times)}


def run_one_search(session: Any, *, metrics: list[str], trials: int, pool_size: int,
                   objective_windows: int, seed: int, objective_s: float, device: torch.device) -> dict[str, Any]:
    """A search over ``metrics``, every candidate reading the session's ``num_samples``; trial times relative to
    one objective evaluation."""
    from adapruner_lightning.search.config import SearchConfig
    from adapruner_lightning.core.session import Candidate
    from adapruner_lightning.search.runner import run_search

    config = SearchConfig.of(trials=trials, init_points=min(3, trials), metrics=metrics, pool_size=pool_size,
                          objective_windows=objective_windows, objective_seq_len=256,
                          vary_num_samples=False)  # trial costs at the stated k, as recorded
    start = time.perf_counter()
    result = run_search(session, config, seed=seed, progress=True)
    wall = time.perf_counter() - start
    trial_s = [t.seconds for t in result.trials]
    out = {
        "metrics": metrics, "trials": trials, "engine": config.engine.name, "seed": seed,
        "trial_seconds": trial_s, "median_trial_s": statistics.median(trial_s),
        "trial_over_objective": statistics.median(trial_s) / objective_s,
        "per_trial_with_suggest_s": wall / trials,
        "search_wall_s": wall, "best_score": result.best.score, "best_ppl": math.exp(-result.best.score),
        "best_candidate": result.best.candidate, "failed": sum(t.status != "ok" for t in result.trials),
    }
    if all(m in CACHED_METRICS for m in metrics):
        cands = [Candidate(**t.candidate) for t in result.trials[:3]]
        out["select"] = measure_select(session, cands, device)
    return out


def _splits(cache: dict, tok: Any, texts: dict, n_pool: int, n_objective: int, seed: int) -> Any:
    from adapruner_lightning.data.calibration import make_splits

    key = (n_pool, n_objective)
    if key not in cache:
        cache[key] = make_splits(tok, texts, n_pool=n_pool, pool_seq_len=128, n_objective=n_objective,
                                 objective_seq_len=256, seed=seed)
    return cache[key]


def _session(model: torch.nn.Module, splits: Any, ratio: float, seed: int, batch_size: int,
             basis: str = "total", num_samples: int = 10) -> Any:
    from adapruner_lightning.core.config import PruningConfig
    from adapruner_lightning.core.session import PruningSession

    device = next(model.parameters()).device
    config = PruningConfig(target_ratio=ratio, seed=seed, ratio_basis=basis, num_samples=num_samples)
    return PruningSession(model, config, splits.pool.to(device),
                          objective_windows=splits.objective.to(device), pool_ids=splits.pool_ids, batch_size=batch_size,
                          progress=False)


def scaling_run(name: str, dims: dict[str, int], base_config: Any, splits: Any, args: argparse.Namespace,
                device: torch.device, log: Any) -> dict[str, Any]:
    """Statistics pass, plain forward+backward, objective and trial cost of one random-init model."""
    from transformers import AutoModelForCausalLM

    from adapruner_lightning.search.config import SearchConfig
    from adapruner_lightning.core.groups import total_params
    from adapruner_lightning.core.session import Candidate
    from adapruner_lightning.search.runner import evaluate_point
    from adapruner_lightning.search.space import SearchSpace

    config = copy.deepcopy(base_config)
    for key, value in dims.items():
        setattr(config, key, value)
    config.head_dim = 64
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device).eval()
    params = total_params(model)
    log(f"[scaling] {name}: {params / 1e6:.1f}M parameters")
    # ratio of the decoder projections: at 11M parameters the (unprunable) embedding is 85 % of the model
    session = _session(model, splits, args.ratio, args.seed, args.batch_size, basis="prunable",
                       num_samples=args.subset_size)  # clipped to the pool
    warm_up(session)
    stats, plain = measure_stats_and_plain(session, 1, device)
    objective = measure_objective(session, 2, device)
    search = SearchConfig.of(trials=args.scaling_trials, metrics=CACHED_METRICS, pool_size=session.pool.shape[0],
                          vary_num_samples=False)
    space = SearchSpace.build(search, session.config, session.stats.features())
    rng = np.random.RandomState(args.seed)
    trials = [evaluate_point(session, space, space.random_point(rng), i) for i in range(args.scaling_trials)]
    trial_s = [t.seconds for t in trials]
    gen = torch.Generator().manual_seed(args.seed)
    n, k = session.pool.shape[0], min(args.subset_size, session.pool.shape[0])
    select = measure_select(session, [Candidate(m, "sum", sorted(torch.randperm(n, generator=gen)[:k].tolist()))
                                      for m in CACHED_METRICS], device)
    row = {
        "name": name, "dims": dims, "params": params, "layers_x_hidden": dims["num_hidden_layers"] * dims["hidden_size"],
        "weights_mib": params * 4 / 2**20, "stats": stats, "plain": plain, "objective": objective,
        "trial_seconds": trial_s, "median_trial_s": statistics.median(trial_s),
        "trial_over_objective": statistics.median(trial_s) / objective["median_s"], "select": select,
        "mlp_channels": dims["num_hidden_layers"] * dims["intermediate_size"],
        "stats_over_plain": stats["seconds"] / plain["seconds"],
    }
    log(f"[scaling] {name}: stats {stats['seconds']:.1f}s ({row['stats_over_plain']:.2f}x plain), "
        f"peak {stats['peak_mib']:.0f} vs {plain['peak_mib']:.0f} MiB, trial/objective {row['trial_over_objective']:.2f}")
    del session, model
    _free()
    return row


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pool", type=int, default=32, help="pool size N of the main searches")
    p.add_argument("--pool-sizes", type=int, nargs="+", default=[16, 32, 64], help="N of the pool-size scaling")
    p.add_argument("--subset-size", type=int, default=8, help="samples per candidate k")
    p.add_argument("--objective-windows", type=int, default=8, help="objective windows (x 256 tokens)")
    p.add_argument("--cached-trials", type=int, default=12, help="trials of the cached-metric search")
    p.add_argument("--taylor-trials", type=int, default=4, help="trials of the element-wise taylor search (0: skip)")
    p.add_argument("--pass-repeats", type=int, default=2,
                   help="statistics pass and plain forward+backward runs each (ABBA order, mean) on the main pool")
    p.add_argument("--objective-repeats", type=int, default=3, help="timed objective evaluations (median)")
    p.add_argument("--sizes", nargs="+", default=list(SCALING_CONFIGS), choices=list(SCALING_CONFIGS),
                   help="random-init configs of the model-size scaling")
    p.add_argument("--scaling-pool", type=int, default=16, help="N of the model-size scaling")
    p.add_argument("--scaling-objective-windows", type=int, default=8, help="objective windows of the size scaling")
    p.add_argument("--scaling-trials", type=int, default=3, help="random trials per size")
    p.add_argument("--batch-size", type=int, default=8, help="batch of the statistics pass and the objective")
    p.add_argument("--ratio", type=float, default=0.2, help="target ratio (fraction of total parameters)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits, the search and the random models")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where search_cost.md / .json go")
    p.add_argument("--report-only", type=Path, default=None, metavar="JSON",
                   help="only re-derive the estimate and rewrite the .md/.json from a saved search_cost.json")
    p.add_argument("--bf16-scale", action="store_true",
                   help="only the memory-at-scale section (memory_scale.py): a 1.07 B-parameter bf16 random Llama, "
                        "peak memory of the statistics pass, a taylor trial, a cached trial and load_pruned as "
                        "ratios to the weights (about 25 min on 2 CPU cores); writes search_cost_bf16.md/.json")
    p.add_argument("--scale-layers", type=int, default=None,
                   help="with --bf16-scale: decoder layers of the random model (default 4; 32 = Llama-3.1-8B, for a GPU)")
    p.add_argument("--record-before", action="store_true",
                   help="with --bf16-scale: record the figures as the 'before' column (run on the older commit)")
    p.add_argument("--quick", action="store_true",
                   help="N=16 (pool sizes 16 32), 4 objective windows, 5 cached + 2 taylor trials, 3 small "
                        "models with N=8 and 2 objective windows, 2 random trials each")
    args = p.parse_args(argv)
    if args.quick:
        args.pool, args.pool_sizes, args.cached_trials, args.taylor_trials = 16, [16, 32], 5, 2
        args.objective_windows = 4
        args.objective_repeats, args.sizes, args.scaling_pool = 2, QUICK_SIZES, 8
        args.scaling_objective_windows, args.scaling_trials = 2, 2
    return args


def bf16_scale(args: argparse.Namespace, log: Any) -> int:
    """The memory-at-scale section (see ``memory_scale.py``); ``--record-before`` stores the 'before' figures.

    Runs with ``MALLOC_MMAP_THRESHOLD_=65536`` (re-executing itself if needed): glibc then maps every block of
    64 KiB or more on its own and unmaps it when freed, so the process's peak RSS follows the peak of live tensor
    bytes, as a GPU's ``max_memory_allocated`` does, instead of heap fragmentation."""
    import os

    import memory_scale

    if args.report_only:  # re-render from a saved search_cost_bf16.json (e.g. after recording a new 'before')
        return _write_bf16(args, json.loads(args.report_only.read_text()), memory_scale)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})

    before_path = args.out_dir / "search_cost_bf16_before.json"
    device = "cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    result = memory_scale.measure(PeakMemory, _free, log, seed=args.seed, device=device, layers=args.scale_layers)
    result["machine"] = machine_info(torch.device(device))
    result["malloc"] = "MALLOC_MMAP_THRESHOLD_=65536"
    if args.record_before:
        before_path.write_text(json.dumps(result, indent=2))
        log(f"recorded {before_path}")
        return 0
    return _write_bf16(args, result, memory_scale)


def _write_bf16(args: argparse.Namespace, result: dict[str, Any], memory_scale: Any) -> int:
    if result.get("device", "cpu") != "cpu":  # a GPU check: its own file, no CPU 'before' column
        text = f"# Search cost at scale on {result['device']}\n\n" + memory_scale.render(result, None)
        write_results(args.out_dir, f"search_cost_bf16_{result['device']}_L{result['layers']}", result, text + "\n")
        return 0
    before = memory_scale.load_before(args.out_dir / "search_cost_bf16_before.json")
    text = ("# Search cost at scale: bf16, 1 B parameters\n\n" + memory_scale.render(result, before) + "\n\n"
            + "## Llama-3.1-8B on one 80 GB GPU (from these ratios)\n\n" + memory_scale.estimate_8b(result, before)
            + "\n\n" + memory_scale.estimate_8b.__doc__.split("\n\n")[1].replace("\n    ", " ").strip())
    write_results(args.out_dir, "search_cost_bf16", result, text + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only and not args.bf16_scale:  # re-derive the estimate and the Markdown from a saved JSON (no measurement)
        result = json.loads(args.report_only.read_text())
        result["estimate"] = paper_estimate(result)
        text = render_markdown(result)
        write_results(args.out_dir, "search_cost", result, text)
        return 0
    from rich.console import Console

    if args.bf16_scale:
        return bf16_scale(args, Console(stderr=True).log)
    from adapruner_lightning.data.text import texts_for
    from adapruner_lightning.data.models import load_model
    from adapruner_lightning.core.session import Candidate

    console = Console(stderr=True)
    log = console.log
    t0 = time.perf_counter()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    torch.manual_seed(args.seed)
    info = machine_info(device)
    log(f"torch threads {torch.get_num_threads()} (default, unchanged), device {device}, "
        f"load average {info.get('loadavg_at_start')}")
    loaded, tok = load_model(None, device=device)
    model = copy.deepcopy(loaded)  # weights in anonymous memory: first touches of a memory-mapped file are not counted
    del loaded
    _free()
    texts = texts_for("austen:calibration")
    split_cache: dict = {}

    # 1. main measurements on the embedded model
    log(f"[main] splits N={args.pool}, objective {args.objective_windows} x 256")
    splits = _splits(split_cache, tok, texts, args.pool, args.objective_windows, args.seed)
    session = _session(model, splits, args.ratio, args.seed, args.batch_size, num_samples=args.subset_size)
    log(f"[main] warm-up (both passes on 2 samples), then statistics pass and plain fwd+bwd x {args.pass_repeats} (ABBA)")
    warm_up(session)
    stats, plain = measure_stats_and_plain(session, args.pass_repeats, device)
    log(f"[main] statistics pass {stats['runs_s']} s, peak {stats['peak_mib']:.0f} MiB; plain forward+backward "
        f"{plain['runs_s']} s, peak {plain['peak_mib']:.0f} MiB; objective evaluations")
    objective = measure_objective(session, args.objective_repeats, device)
    log(f"[main] one objective evaluation: {objective['median_s']:.2f}s")
    searches = {}
    log(f"[main] search over cached metrics {CACHED_METRICS}, {args.cached_trials} trials")
    searches["cached"] = run_one_search(session, metrics=CACHED_METRICS, trials=args.cached_trials, pool_size=args.pool,
                                        objective_windows=args.objective_windows,
                                        seed=args.seed, objective_s=objective["median_s"], device=device)
    log(f"[main] cached: trial/objective {searches['cached']['trial_over_objective']:.2f}")
    if args.taylor_trials:
        log(f"[main] search over element-wise taylor, {args.taylor_trials} trials")
        searches["taylor"] = run_one_search(session, metrics=["taylor"], trials=args.taylor_trials, pool_size=args.pool,
                                            objective_windows=args.objective_windows,
                                            seed=args.seed, objective_s=objective["median_s"], device=device)
        log(f"[main] taylor: trial/objective {searches['taylor']['trial_over_objective']:.2f}")
    main_result = {"pool": args.pool, "stats": stats, "plain": plain, "objective": objective, "searches": searches}

    # 2. pool size
    pool_rows = []
    gen = torch.Generator().manual_seed(args.seed)
    for n in args.pool_sizes:
        log(f"[pool] N={n}")
        if n == args.pool:
            st, sess = stats, session
        else:
            sess = _session(model, _splits(split_cache, tok, texts, n, args.objective_windows, args.seed), args.ratio,
                            args.seed, args.batch_size)
            st = measure_stats(sess, device)
        k = min(args.subset_size, n)
        cands = [Candidate(m, "sum", sorted(torch.randperm(n, generator=gen)[:k].tolist())) for m in CACHED_METRICS]
        pool_rows.append({"pool": n, "stats": st, "select": measure_select(sess, cands, device)})
        log(f"[pool] N={n}: stats {st['seconds']:.1f}s, peak {st['peak_mib']:.0f} MiB, cache {st['cache_mib']:.1f} MiB")
        if sess is not session:
            sess.release()
        del sess
        _free()
    session.release()
    del session

    # 3. model size
    scaling_rows = []
    scaling_splits = _splits(split_cache, tok, texts, args.scaling_pool, args.scaling_objective_windows, args.seed)
    for name in args.sizes:
        scaling_rows.append(scaling_run(name, SCALING_CONFIGS[name], model.config, scaling_splits, args, device, log))

    try:
        with open("/proc/loadavg") as fh:
            info["loadavg_at_end"] = fh.read().split()[:3]
    except OSError:
        pass
    result = {
        "machine": info,
        "settings": {"pool": args.pool, "pool_sizes": args.pool_sizes, "subset_size": args.subset_size,
                     "objective_windows": args.objective_windows, "cached_trials": args.cached_trials,
                     "taylor_trials": args.taylor_trials, "sizes": args.sizes, "scaling_pool": args.scaling_pool,
                     "scaling_objective_windows": args.scaling_objective_windows,
                     "scaling_trials": args.scaling_trials, "batch_size": args.batch_size, "ratio": args.ratio,
                     "seed": args.seed, "quick": args.quick},
        "main": main_result, "pool_scaling": pool_rows, "scaling": scaling_rows,
    }
    result["estimate"] = paper_estimate(result)
    result["wall_seconds"] = time.perf_counter() - t0
    text = render_markdown(result)
    write_results(args.out_dir, "search_cost", result, text)
    log(f"written {args.out_dir / 'search_cost.md'} and .json in {result['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
