"""evaluate_model, EvalResult and the `adapruner eval` command on a tiny random model."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from helpers_eval import synthetic_text, tiny_model, tiny_tokenizer
from rich.console import Console
from rich.table import Table

from adapruner_lightning.cli import eval as eval_cli
from adapruner_lightning.cli import main as cli_main
from adapruner_lightning.data.text import tokenize_windows
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.evaluation.evaluate import EvalResult, evaluate_model, render, task_items
from adapruner_lightning.evaluation.metrics import evaluate_perplexity
from adapruner_lightning.evaluation.loglik import score_multiple_choice


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    return {"book_a": synthetic_text(n_paragraphs=70, seed=11), "book_b": synthetic_text(n_paragraphs=70, seed=12)}


def test_evaluate_model_perplexity_and_offline_tasks(texts: dict[str, str]) -> None:
    tok, model = tiny_tokenizer(), tiny_model()
    result = evaluate_model(model, tok, texts, tasks=["austen_next_sentence_easy", "austen_cloze"], seq_len=32,
                            max_tokens=96, n_items=9, progress=False)
    for name, text in texts.items():
        windows = tokenize_windows(tok, text, 32, 3)
        assert result.perplexity[name] == pytest.approx(evaluate_perplexity(model, windows, progress=False), rel=1e-5)
        assert result.meta["windows"][name] == 3
    cloze = result.zeroshot["austen_cloze"]
    assert cloze["n"] == 9 and cloze["chance"] == pytest.approx(0.25)
    items = task_items("austen_cloze", texts, n_items=9)
    assert len(items) == 9 and {i.task for i in items} == {"austen_cloze"}
    assert cloze["acc"] == pytest.approx(score_multiple_choice(model, tok, items, progress=False)["acc"])
    assert result.zeroshot["austen_next_sentence_easy"]["chance"] == pytest.approx(0.5)
    assert set(result.seconds) == {"perplexity/book_a", "perplexity/book_b", "zeroshot/austen_next_sentence_easy",
                                   "zeroshot/austen_cloze", "total"}
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()
    assert EvalResult.from_dict(result.to_dict()) == result
    assert 0 <= result.mean_accuracy() <= 1


def test_render_table(texts: dict[str, str]) -> None:
    result = EvalResult(perplexity={"book_a": 12.5}, zeroshot={"t": {"acc": 0.6, "acc_norm": 0.7, "acc_stderr": 0.01,
                                                                      "acc_norm_stderr": 0.01, "n": 10, "chance": 0.5}},
                        seconds={"perplexity/book_a": 1.0, "zeroshot/t": 2.0, "total": 3.0}, meta={"windows": {"book_a": 4}})
    table = render(result, "demo")
    assert isinstance(table, Table) and table.title == "demo" and table.row_count == 2
    console = Console(record=True, width=120)
    console.print(table)
    out = console.export_text()
    assert "12.500" in out and "0.6000" in out and "book_a" in out


def test_standard_task_from_a_local_file(tmp_path: Path, texts: dict[str, str]) -> None:
    path = tmp_path / "piqa.jsonl"
    path.write_text("\n".join(json.dumps({"goal": f"Anne walked to {p}", "sol1": "Bath.", "sol2": "Lyme.", "label": i % 2})
                              for i, p in enumerate(["Bath", "Lyme", "Kellynch"])), encoding="utf-8")
    result = evaluate_model(tiny_model(), tiny_tokenizer(), {}, tasks=["piqa"], task_texts={"piqa": path},
                            n_items=2, progress=False)
    assert result.perplexity == {} and result.zeroshot["piqa"]["n"] == 2


def test_bad_settings_raise_config_errors(texts: dict[str, str]) -> None:
    tok, model = tiny_tokenizer(), tiny_model()
    with pytest.raises(ConfigError, match="max_tokens"):
        evaluate_model(model, tok, texts, seq_len=64, max_tokens=32, progress=False)
    with pytest.raises(ConfigError, match="task"):
        evaluate_model(model, tok, texts, tasks=["nope"], progress=False)


def _fake_models(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> None:
    def load_model(spec: str | None) -> tuple:
        calls.append(f"load_model:{spec}")
        return tiny_model(), tiny_tokenizer()

    def load_pruned(path: Path) -> tuple:
        calls.append(f"load_pruned:{Path(path).name}")
        return tiny_model(), tiny_tokenizer(), {"removed": {}}

    monkeypatch.setitem(sys.modules, "adapruner_lightning.data.models", types.SimpleNamespace(load_model=load_model))
    monkeypatch.setitem(sys.modules, "adapruner_lightning.outputs.export", types.SimpleNamespace(load_pruned=load_pruned))


def test_main_prints_json_and_loads_pruned_exports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], texts: dict[str, str]) -> None:
    calls: list[str] = []
    _fake_models(monkeypatch, calls)
    book = tmp_path / "book.txt"
    book.write_text(texts["book_a"], encoding="utf-8")
    pruned = tmp_path / "pruned"
    pruned.mkdir()
    (pruned / "pruning_plan.json").write_text("{}", encoding="utf-8")
    args = ["--text", str(book), "--tasks", "austen_cloze", "--seq-len", "32", "--max-tokens", "64", "--items", "4"]
    assert eval_cli.main(["--model", str(pruned), *args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["perplexity"]) == {"book"} and out["zeroshot"]["austen_cloze"]["n"] == 4
    assert eval_cli.main(["--model", "some/dir", *args, "--no-progress"]) == 0
    assert "perplexity book" in capsys.readouterr().out
    assert calls == ["load_pruned:pruned", "load_model:some/dir"]


def test_main_reports_config_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_models(monkeypatch, [])
    assert cli_main.main(["eval", "--tasks", "no_such_task"]) == 2
    assert "no_such_task" in capsys.readouterr().err


def test_offline_task_source_overrides_the_evaluation_texts(tmp_path: Path, texts: dict[str, str]) -> None:
    book = tmp_path / "other.txt"
    book.write_text(texts["book_b"], encoding="utf-8")
    from_path = task_items("austen_cloze", {"ignored": "x"}, source=book, n_items=5)
    from_text = task_items("austen_cloze", {"ignored": "x"}, source=texts["book_b"], n_items=5)
    assert from_path == from_text and len(from_path) == 5
    split = task_items("austen_cloze", texts, n_items=5)  # 3 from book_a, 2 from book_b
    assert len(split) == 5 and split != from_text
