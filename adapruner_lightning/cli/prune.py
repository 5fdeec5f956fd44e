"""``adapruner prune``: search + physical prune + export + report, without training, for any supported model.

Example::

    adapruner prune --model PATH --text austen:calibration --target-ratio 0.2 --trials 16 --out pruned/
    adapruner prune --trials 0 --metric taylor --keep-first 4 --keep-last 2 --out llm_pruner_default/
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from adapruner_lightning.core.importance import REDUCERS, metric_names
from adapruner_lightning.core.reconstruction import RECONSTRUCTIONS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adapruner prune", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="HF model dir, .gguf file or hub id (default: embedded SmolLM2-135M)")
    p.add_argument("--text", nargs="+", default=["austen:calibration"],
                   help="calibration/objective text: files, directories or austen: selectors (never evaluation text)")
    p.add_argument("--out", required=True, help="output directory (export, plan, report, search plot); the search "
                   "trace goes beside it as OUT.search_trace.jsonl, so the atomic export never replaces it and "
                   "a rerun resumes it")
    p.add_argument("--device", default="cpu", help="where the search and pruning run, e.g. cuda (default cpu)")
    p.add_argument("--dtype", default="float32", help="model dtype: float32 | bfloat16 | float16 (kept through "
                   "search, pruning and export; statistics accumulate in float32)")
    p.add_argument("--no-progress", action="store_true")
    pruning = p.add_argument_group("pruning (PruningConfig)")
    pruning.add_argument("--target-ratio", type=float, default=0.2, help="fraction of parameters to remove (default 0.2)")
    pruning.add_argument("--ratio-basis", choices=["total", "prunable"], default="total")
    pruning.add_argument("--metric", choices=metric_names(), default="taylor", help="metric when --trials 0")
    pruning.add_argument("--reducer", choices=sorted(REDUCERS), default="sum", help="reducer when --trials 0")
    pruning.add_argument("--scope", choices=["layerwise", "global", "standardized"], default="layerwise")
    pruning.add_argument("--keep-first", type=int, default=0)
    pruning.add_argument("--keep-last", type=int, default=0)
    pruning.add_argument("--uniform", action="store_true", help="identical layer shapes (plain from_pretrained reloads)")
    pruning.add_argument("--round-to", type=int, default=1)
    pruning.add_argument("--reconstruction", choices=list(RECONSTRUCTIONS), default=None,
                         help="what makes up for the removed channels with --trials 0 (none; bias: FLAP's bias "
                              "compensation; lstsq: kept columns re-fitted in least squares on the pool); with a "
                              "search, the only choice searched (default: the search picks among all three)")
    pruning.add_argument("--bias-compensation", action="store_true", help="deprecated: --reconstruction bias")
    pruning.add_argument("--sample-len", type=int, default=128, help="tokens per calibration sample")
    pruning.add_argument("--seed", type=int, default=0)
    search = p.add_argument_group("search (SearchConfig)")
    search.add_argument("--trials", type=int, default=16, help="search trials; 0 = no search, use --metric (default 16)")
    data = p.add_argument_group("search data (SearchConfig.data)")
    data.add_argument("--pool-size", type=int, default=64, help="candidate calibration samples N")
    data.add_argument("--subset-size", type=int, default=10,
                      help="samples of the --trials 0 configuration, and per candidate with --fixed-subset-size")
    data.add_argument("--objective-windows", type=int, default=8, help="held-apart windows scoring each candidate")
    data.add_argument("--objective-seq-len", type=int, default=256, help="tokens per objective window")
    engine = p.add_argument_group("search engine (SearchConfig.engine)")
    engine.add_argument("--engine", choices=["gp", "tpe", "random"], default="gp")
    space = p.add_argument_group("search space (SearchConfig.space)")
    space.add_argument("--metrics", nargs="+", choices=metric_names(), default=None, help="metrics the search may pick")
    space.add_argument("--fixed-subset-size", action="store_true",
                       help="every candidate reads --subset-size samples (default: the search picks 2 to --pool-size)")
    allocation = p.add_argument_group("per-layer allocation stage after the search (SearchConfig.allocation)")
    allocation.add_argument("--generations", type=int, default=0,
                            help="generations of the evolutionary per-layer allocation (0: no stage)")
    allocation.add_argument("--offspring", type=int, default=8, help="offspring per generation")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``adapruner prune``."""
    args = _parser().parse_args(argv)
    from adapruner_lightning.core.config import PruningConfig
    from adapruner_lightning.outputs.export import save_pruned
    from adapruner_lightning.core.physical import apply_plan
    from adapruner_lightning.core.session import PruningSession, check_model
    from adapruner_lightning.data.calibration import make_splits
    from adapruner_lightning.data.models import load_model, resolve_dtype
    from adapruner_lightning.data.text import texts_for
    from adapruner_lightning.outputs.report import plot_search, write_report
    from adapruner_lightning.search.config import SearchConfig
    from adapruner_lightning.search.runner import run_search

    config = PruningConfig(target_ratio=args.target_ratio, ratio_basis=args.ratio_basis, metric=args.metric,
                           reducer=args.reducer, scope=args.scope, keep_first=args.keep_first, keep_last=args.keep_last,
                           per_layer="uniform" if args.uniform else "auto", round_to=args.round_to,
                           reconstruction=args.reconstruction or "none", bias_compensation=args.bias_compensation,
                           num_samples=args.subset_size, sample_len=args.sample_len, seed=args.seed)
    search = SearchConfig.of(trials=args.trials, engine=args.engine, pool_size=args.pool_size,
                             subset_size=args.subset_size, objective_windows=args.objective_windows,
                             objective_seq_len=args.objective_seq_len, vary_subset_size=not args.fixed_subset_size,
                             generations=args.generations, offspring=args.offspring,
                             **({"metrics": args.metrics} if args.metrics else {}),
                             **({"reconstructions": [config.reconstruction]} if args.reconstruction or
                                args.bias_compensation else {}))
    resolve_dtype(args.dtype)  # bad input fails before any loading
    texts = texts_for(args.text)
    out = Path(args.out)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    check_model(model, needs_gradients=True)
    seconds["load"] = time.perf_counter() - t
    splits = make_splits(tokenizer, texts, n_pool=args.pool_size, pool_seq_len=args.sample_len,
                         n_objective=args.objective_windows, objective_seq_len=search.data.objective_seq_len, seed=args.seed)
    session = PruningSession(model, config, splits.pool, objective=splits.objective, pool_ids=splits.pool_ids,
                             progress=not args.no_progress)
    t = time.perf_counter()
    trace = []
    if args.trials > 0:
        out.mkdir(parents=True, exist_ok=True)
        result = run_search(session, search, trace_path=out.parent / f"{out.name}.search_trace.jsonl",
                            progress=not args.no_progress)
        plan, trace = result.plan, result.trace()
    else:
        plan = session.plan(session.default_candidate())
    seconds["search"] = time.perf_counter() - t
    refit = session.least_squares if plan.refits_weights else None
    session.release()
    plan.provenance["bos"] = splits.bos
    t = time.perf_counter()
    apply_plan(model, plan, refit=refit)
    seconds["prune"] = time.perf_counter() - t
    save_pruned(model, tokenizer, out, plan)
    if trace:
        plot_search(trace, plan, out / "search_trace.png")
    report = {"params": {"before": plan.params_before, "after": plan.params_after, "removed_ratio": plan.achieved_ratio},
              "seconds": seconds, "plan_summary": {k: v for k, v in plan.provenance.items() if k != "versions"}}
    write_report(out, report)
    print(json.dumps(report, indent=1, default=str))
    return 0
