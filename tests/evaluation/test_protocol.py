"""The evaluation protocol's items: seeded random samples, development records apart from the scored ones."""

from __future__ import annotations

import pytest

from adapruner_lightning.errors import ConfigError
from adapruner_lightning.evaluation import protocol
from adapruner_lightning.evaluation.tasks import load_task, sample_records, standard_records

SEVEN = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


def test_a_sample_is_seeded_random_in_order_and_nested() -> None:
    records = list(range(1000))
    a = sample_records(records, 30, seed=0)
    assert len(a) == 30 and a == sorted(a) and a != records[:30]
    assert a == sample_records(records, 30, seed=0) and a != sample_records(records, 30, seed=1)
    assert set(a) <= set(sample_records(records, 300, seed=0))  # a larger sample holds the smaller
    assert sample_records(records, None) == records and sample_records(records, 5000) == records


def test_the_first_items_are_not_a_sample_boolqs_are_mostly_yes() -> None:
    """Why items are sampled: the first 30 BoolQ records lean to one answer; a seeded sample of 300 is near the
    split's own rate."""
    labels = [r["label"] for r in standard_records("boolq")]
    rate = sum(labels) / len(labels)
    first = sum(labels[:30]) / 30
    sampled = [r["label"] for r in sample_records(standard_records("boolq"), 300)]
    assert abs(first - rate) > 0.1
    assert abs(sum(sampled) / 300 - rate) < 0.06
    assert [i.gold for i in load_task("boolq", limit=300)] == sampled


@pytest.mark.parametrize("task", [*SEVEN, "lambada_openai"])
def test_development_and_evaluation_records_are_disjoint_and_large_enough(task: str) -> None:
    dev, test = protocol.role_records(task, "dev"), protocol.role_records(task, "test")
    assert len(dev) >= 299 and len(test) >= 500
    key = repr
    assert not {key(r) for r in dev} & {key(r) for r in test}
    if task in protocol.DEV_SPLITS:  # another shipped split: the scored one is the evaluation part, whole
        assert test == standard_records(task)
    else:  # a fixed hold-back of the scored split, the same in every run
        scored = standard_records(task)
        assert len(dev) + len(test) == len(scored) and len(dev) == min(protocol.DEV_HOLDOUT, len(scored) // 4)
        assert protocol.holdout(task, len(scored)) == protocol.holdout(task, len(scored))


def test_role_items_sample_each_role_and_refuse_what_has_no_role() -> None:
    items = protocol.role_items("arc_challenge", "dev", 50, seed=3)
    assert len(items) == 50 and items == protocol.role_items("arc_challenge", "dev", 50, seed=3)
    assert len(protocol.role_items("arc_challenge", "dev")) == 299  # the whole validation split
    with pytest.raises(ConfigError, match="role='train' is invalid"):
        protocol.role_records("boolq", "train")
    with pytest.raises(ConfigError, match="a standard task"):
        protocol.role_records("austen_cloze", "dev")
