"""The task registry: every standard and offline zero-shot task by name, and loading a task's items.
"""

from __future__ import annotations

from pathlib import Path

from adapruner_lightning.errors import ConfigError
from adapruner_lightning.evaluation.items import MCItem, TaskSpec
from adapruner_lightning.evaluation.tasks_offline import OFFLINE_TASKS
from adapruner_lightning.evaluation.tasks_standard import STANDARD_TASKS, _load_hf, read_records

#: Every registered task, standard and offline.
TASKS: dict[str, TaskSpec] = {**STANDARD_TASKS, **OFFLINE_TASKS}


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` called ``name``; :class:`ConfigError` listing the names otherwise."""
    if name not in TASKS:
        raise ConfigError("task", name, f"one of {sorted(TASKS)}")
    return TASKS[name]


def load_task(
    name: str, path: str | Path | None = None, *, limit: int | None = None, split: str = "validation", seed: int = 0
) -> list[MCItem]:
    """Load a task's items.

    Standard tasks read ``path`` (a local ``.jsonl``/``.json``/``.parquet`` file in the task's published
    Hugging Face format, see :func:`read_records`) or, when ``path`` is ``None``, call
    ``datasets.load_dataset`` (needs network access; offline this raises a :class:`ConfigError` asking for
    a local file). Offline tasks build their items from the text file ``path`` (required).

    Args:
        name: a key of :data:`TASKS`.
        path: local file (see above).
        limit: keep the first ``limit`` records (offline tasks: build this many items, default 200).
        split: the ``datasets`` split, or the key of a multi-split ``.json`` file.
        seed: generator seed of offline tasks.

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
    records = read_records(path, split) if path is not None else _load_hf(spec, split)
    records = records[:limit] if limit is not None else records
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
        raise ConfigError(f"task {name}", str(path), "at least one record")
    return items
