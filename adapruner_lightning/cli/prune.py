"""``adapruner prune``: search + physical prune + export + report, without training, for any supported model.

The pruning and search options are :class:`~adapruner_lightning.core.config.PruningConfig` and
:class:`~adapruner_lightning.search.config.SearchConfig` themselves, read by jsonargparse (``--pruning.<field>``,
``--search.<field>``, ``--search.data.<field>`` ...): their flags, types, choices, defaults and help come from the
dataclasses, and a YAML file of the same keys is read with ``--config``. The common options also have short
spellings (:data:`ALIASES`).

Example::

    adapruner prune --model PATH --text austen:calibration --target-ratio 0.2 --trials 16 --out pruned/
    adapruner prune --trials 0 --metric taylor --keep-first 4 --keep-last 2 --out llm_pruner_default/
    adapruner prune --search.data.objective kl --search.engine.name tpe --out pruned/
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

#: short spelling -> the arguments it stands for (``{}``: the value given). Names only: the types, choices,
#: defaults and help are the config fields'.
ALIASES: dict[str, list[str]] = {
    "--target-ratio": ["--pruning.target_ratio", "{}"],
    "--ratio-basis": ["--pruning.ratio_basis", "{}"],
    "--metric": ["--pruning.metric", "{}"],
    "--reducer": ["--pruning.reducer", "{}"],
    "--scope": ["--pruning.scope", "{}"],
    "--keep-first": ["--pruning.keep_first", "{}"],
    "--keep-last": ["--pruning.keep_last", "{}"],
    "--round-to": ["--pruning.round_to", "{}"],
    "--sample-len": ["--pruning.sample_len", "{}"],
    "--seed": ["--pruning.seed", "{}"],
    "--uniform": ["--pruning.per_layer", "uniform"],
    "--reconstruction": ["--pruning.reconstruction", "{}", "--search.space.reconstructions", "[{}]"],
    "--bias-compensation": ["--pruning.bias_compensation", "true", "--search.space.reconstructions", "[bias]"],
    "--trials": ["--search.trials", "{}"],
    "--engine": ["--search.engine.name", "{}"],
    "--pool-size": ["--search.data.pool_size", "{}"],
    "--num-samples": ["--pruning.num_samples", "{}"],
    "--objective-windows": ["--search.data.objective_windows", "{}"],
    "--objective-seq-len": ["--search.data.objective_seq_len", "{}"],
    "--reconstruction-windows": ["--search.data.reconstruction_windows", "{}"],
    "--metrics": ["--search.space.metrics", "[{}]"],
    "--fixed-num-samples": ["--search.space.vary_num_samples", "false"],
    "--generations": ["--search.allocation.generations", "{}"],
    "--offspring": ["--search.allocation.offspring", "{}"],
    "--block-removal": ["--search.allocation.block_removal", "true"],
    "--train-candidates": ["--search.training_aware.candidates", "{}"],
    "--train-steps": ["--search.training_aware.steps", "{}"],
    "--no-progress": ["--progress", "false"],
}
#: deprecated short spelling -> the one it stands for (a warning on stderr names it)
DEPRECATED_ALIASES: dict[str, str] = {"--subset-size": "--num-samples", "--fixed-subset-size": "--fixed-num-samples"}


def _expand(argv: list[str]) -> list[str]:
    """``argv`` with every short spelling replaced by the arguments it stands for (``--metrics a b`` takes the
    values up to the next flag as one list; a deprecated spelling warns and stands for its new one)."""
    from adapruner_lightning.config import deprecated

    out: list[str] = []
    i = 0
    while i < len(argv):
        name, _, inline = argv[i].partition("=")
        if name in DEPRECATED_ALIASES:
            deprecated(name, DEPRECATED_ALIASES[name])
            name = DEPRECATED_ALIASES[name]
        template = ALIASES.get(name)
        if template is None:
            out.append(argv[i])
            i += 1
            continue
        takes, many = any("{}" in part for part in template), "[{}]" in template
        values: list[str] = [inline] if inline else []
        if takes and not inline:
            while i + 1 < len(argv) and not argv[i + 1].startswith("--") and (many or not values):
                values.append(argv[i + 1])
                i += 1
        value = ", ".join(values)
        out += [part.replace("{}", value) for part in template]
        i += 1
    return out


def _parser():
    """The parser: this command's own options, then every PruningConfig and SearchConfig field."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from adapruner_lightning.core.config import PruningConfig
    from adapruner_lightning.core.importance import metric_names
    from adapruner_lightning.data.models import DTYPES
    from adapruner_lightning.search.config import SearchConfig
    from adapruner_lightning.search.engines import engine_names

    aliases = "; ".join(f"{k}{' X' if any('{}' in part for part in v) else ''} = {' '.join(v).replace('{}', 'X')}"
                        for k, v in ALIASES.items())
    p = ArgumentParser(prog="adapruner prune", description=__doc__.split("\n\n")[0], exit_on_error=False,
                       epilog=f"Importance metrics: {', '.join(metric_names())}. Search engines: "
                              f"{', '.join(engine_names())}. Short spellings: {aliases}. Deprecated spellings: "
                              f"{'; '.join(f'{old} (use {new})' for old, new in DEPRECATED_ALIASES.items())}.")
    p.add_argument("--config", action=ActionConfigFile, help="a YAML file of these options (pruning:, search: ...)")
    p.add_argument("--model", type=Optional[str], default=None,
                   help="HF model dir, .gguf file or hub id (default: the embedded SmolLM2-135M)")
    p.add_argument("--text", type=str, nargs="+", default=["austen:calibration"],
                   help="calibration/objective text: files, directories or austen: selectors (never evaluation text)")
    p.add_argument("--out", type=str, required=True,
                   help="output directory (export, plan, report, search plot); the search trace goes beside it as "
                        "OUT.search_trace.jsonl, so the atomic export never replaces it and a rerun resumes it")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT when it holds an earlier export (atomically); any other existing file or "
                        "non-empty directory is always refused")
    p.add_argument("--device", type=str, default="cpu", help="where the search and pruning run, e.g. cuda")
    p.add_argument("--dtype", type=str, default="float32",
                   help=f"model dtype: {' | '.join(DTYPES)} (kept through search, pruning and export)")
    p.add_argument("--progress", type=bool, default=True, help="show progress bars (--no-progress: off)")
    p.add_class_arguments(PruningConfig, "pruning")
    p.add_class_arguments(SearchConfig, "search")
    return p


def parse(argv: list[str]) -> Any:
    """The options of ``argv``, with ``pruning`` and ``search`` built as their dataclasses (their checks run).

    Raises:
        AdaPrunerError: an option jsonargparse refuses (unknown, wrong type, not a choice), as one line.
        ConfigError: a value a config's own checks refuse.
    """
    from argparse import ArgumentError

    from adapruner_lightning.errors import AdaPrunerError

    parser = _parser()
    with _deprecations_on_stderr():
        try:
            config = parser.parse_args(_expand(argv))
        except ArgumentError as error:
            message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
            raise AdaPrunerError(f"{message} (see adapruner prune --help)") from None
        build = getattr(parser, "instantiate", None) or parser.instantiate_classes
        return build(config)


@contextmanager
def _deprecations_on_stderr() -> Iterator[None]:
    """Show this library's deprecation warnings (a deprecated flag or config key, :func:`config.deprecated`) as
    one line each on stderr: Python hides DeprecationWarnings outside ``__main__``, and a CLI user is to see them."""
    import sys
    import warnings

    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DeprecationWarning)
            yield
    finally:  # outside the recording: other warnings go on as they came
        for warning in caught:
            if issubclass(warning.category, DeprecationWarning) and " is deprecated: use " in str(warning.message):
                print(f"adapruner prune: warning: {warning.message}", file=sys.stderr)
            elif not issubclass(warning.category, DeprecationWarning):
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def prepare_output(out: Path) -> Path:
    """The one place the output directory is prepared, before any model loads; returns the search trace's path
    (beside ``out``: the atomic export replaces ``out`` whole, and a rerun resumes the trace)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent / f"{out.name}.search_trace.jsonl"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``adapruner prune``: ``--out`` is checked (``outputs.guard``) and locked before any work."""
    import sys

    from adapruner_lightning.data.locks import writer_lock
    from adapruner_lightning.data.models import model_inputs
    from adapruner_lightning.outputs.guard import check_output_path

    args = parse(list(sys.argv[1:] if argv is None else argv))
    out = check_output_path(args.out, inputs=model_inputs(args.model), overwrite=args.overwrite, flag="--out",
                            overwrite_flag="--overwrite")
    with writer_lock(out, what="--out"):
        return _prune(args, out)


def _prune(args: Any, out: Path) -> int:
    """Search (or take the configured candidate), prune, export and report into ``out``."""
    from adapruner_lightning.core.physical import apply_plan
    from adapruner_lightning.core.session import PruningSession, check_model
    from adapruner_lightning.data.calibration import make_splits
    from adapruner_lightning.data.models import load_model, resolve_dtype
    from adapruner_lightning.data.text import texts_for
    from adapruner_lightning.outputs.export import save_pruned
    from adapruner_lightning.outputs.report import plan_summary, plot_search, to_markdown, write_report
    from adapruner_lightning.search.pipeline import find_plan

    pruning, search = args.pruning, args.search
    resolve_dtype(args.dtype)  # bad input fails before any loading
    texts = texts_for(args.text)
    trace_path = prepare_output(out)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    check_model(model, needs_gradients=True)
    seconds["load"] = time.perf_counter() - t
    splits = make_splits(tokenizer, texts, n_pool=search.data.pool_size, pool_seq_len=pruning.sample_len,
                         n_objective=search.data.objective_windows, objective_seq_len=search.data.objective_seq_len,
                         seed=pruning.seed)
    session = PruningSession(model, pruning, splits.pool, objective_windows=splits.objective, pool_ids=splits.pool_ids,
                             progress=args.progress,
                             reconstruction_windows=splits.reconstruction(search.data.reconstruction_windows))
    result = find_plan(session, search, trace_path=trace_path, progress=args.progress, bos=splits.bos)
    seconds["search"] = result.seconds
    t = time.perf_counter()
    apply_plan(model, result.plan, refit=result.refit)
    seconds["prune"] = time.perf_counter() - t
    plan = result.plan
    save_pruned(model, tokenizer, out, plan, overwrite=args.overwrite)
    plot = plot_search(result.trace(), plan, out / "search_trace.png") if result.trials else None
    report = {"params": {"before": plan.params_before, "after": plan.params_after, "removed_ratio": plan.achieved_ratio},
              "seconds": seconds, "search": result.summary(), "plan": plan_summary(plan),
              "files": {"plot": str(plot) if plot else None, "trace": str(trace_path) if result.trials else None}}
    write_report(out, report, plan)
    print(to_markdown(report, plan))
    return 0
