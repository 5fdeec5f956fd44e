"""The documentation's tables are rendered from committed results files (benchmarks/render.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import readme_tables  # noqa: E402
import render  # noqa: E402
from readme_tables import RENDERERS  # noqa: E402

TABLE = "| a | b |\n|---|---|\n| 1 | 2.50 |\n"


def test_every_table_of_the_readmes_and_docs_is_what_its_results_file_renders() -> None:
    """Fails on a hand-edited number in a rendered table, on a table with no renderer and no documentation marker,
    and on a block naming an unknown renderer. Fix: `python benchmarks/render.py` (after committing the results)."""
    paths = render.documents()
    assert render.ROOT / "README.md" in paths and render.ROOT / "benchmarks" / "README.md" in paths
    assert render.check(paths, RENDERERS) == []


def test_a_planted_wrong_number_a_loose_table_and_an_unknown_block_are_caught(tmp_path) -> None:
    renderers = {"t": lambda root: TABLE}
    doc = tmp_path / "doc.md"
    good = f"intro\n\n<!-- render: t -->\n{TABLE}<!-- /render -->\n\n<!-- table: documentation -->\n| x |\n|---|\n"
    doc.write_text(good)
    assert render.check([doc], renderers, tmp_path) == []
    doc.write_text(good.replace("2.50", "2.51"))  # a planted wrong number
    assert [p.split(": ", 1)[1] for p in render.check([doc], renderers, tmp_path)] == [
        "block 't' differs from what it renders (python benchmarks/render.py rewrites it)"]
    assert render.render_text(doc.read_text(), renderers) == good  # rendering restores it
    doc.write_text(good + "\n| loose | table |\n|---|---|\n")
    assert render.check([doc], renderers, tmp_path) == [
        "doc.md:13: a table that is neither rendered nor marked <!-- table: documentation -->"]
    doc.write_text(good.replace("render: t ", "render: nope "))
    assert "names no renderer" in render.check([doc], renderers, tmp_path)[0]


def test_an_empty_block_is_filled_and_docs_are_found(tmp_path) -> None:
    (tmp_path / "docs" / "results").mkdir(parents=True)
    page = tmp_path / "docs" / "results" / "page.md"
    page.write_text("<!-- render: t -->\n<!-- /render -->\n")
    assert render.documents(tmp_path) == [page]
    assert render.render_text(page.read_text(), {"t": lambda root: TABLE}) == f"<!-- render: t -->\n{TABLE}<!-- /render -->\n"


def test_the_summary_refuses_two_runs_that_scored_another_dense_model(tmp_path) -> None:
    """The README's summary mixes two quality runs; their cells compare only when both scored the same dense model."""
    results = render.ROOT / "benchmarks" / "results"
    for folder in readme_tables.SUMMARY:
        (tmp_path / "benchmarks" / "results" / folder).mkdir(parents=True)
        (tmp_path / "benchmarks" / "results" / folder / "cells.jsonl").write_text(
            (results / folder / "cells.jsonl").read_text())
    assert readme_tables.baselines(tmp_path) == readme_tables.baselines(render.ROOT)
    other = tmp_path / "benchmarks" / "results" / readme_tables.SUMMARY[1] / "cells.jsonl"
    rows = [json.loads(line) for line in other.read_text().splitlines()]
    for row in rows:
        if row["method"] == "dense" and not row["recovered"]:
            row["ppl/Persuasion"] *= 1.01  # another dense model's perplexity
    other.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ValueError, match="another dense model"):
        readme_tables.baselines(tmp_path)
