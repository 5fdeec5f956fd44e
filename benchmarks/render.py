"""Render the documentation's tables from the committed results files, or check that they are.

A table of measured numbers in ``README.md``, ``benchmarks/README.md`` or any ``docs/**/*.md`` lives between
markers and is written by a renderer, never by hand::

    <!-- render: quality_protocol -->
    | ... the table that readme_tables.RENDERERS["quality_protocol"] returns ... |
    <!-- /render -->

A renderer (``readme_tables.py``) reads only files under ``benchmarks/results/`` (or the installed task data, for
the split sizes), so every figure in a table has a results file behind it. A table that holds no measurement (a
list of options, of splits, of defaults) says so on the line before it: ``<!-- table: documentation -->``. Any
other table is an error of :func:`check`, as is a block whose text differs from what its renderer returns.

    python benchmarks/render.py           # rewrite every block in place
    python benchmarks/render.py --check   # exit 1 and name every block or table that is not as rendered
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- render: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /render -->)", re.S)
DOCUMENTATION = "<!-- table: documentation -->"


class RenderError(Exception):
    """A block that cannot be rendered: an unknown renderer, or a renderer that failed (a results file missing)."""


def documents(root: Path = ROOT) -> list[Path]:
    """The Markdown files whose tables are rendered: the two READMEs and everything under ``docs/``."""
    found = [root / "README.md", root / "benchmarks" / "README.md", *sorted((root / "docs").rglob("*.md"))]
    return [path for path in found if path.is_file()]


def render_text(text: str, renderers: dict[str, Callable[[Path], str]], root: Path = ROOT) -> str:
    """``text`` with the body of every render block replaced by its renderer's output.

    Raises:
        RenderError: a block names no known renderer, or its renderer fails (e.g. its results file is missing).
    """
    def body(match: re.Match) -> str:
        name = match.group("name")
        if name not in renderers:
            raise RenderError(f"render block {name!r} names no renderer; known: {sorted(renderers)}")
        try:
            table = renderers[name](root)
        except Exception as error:  # noqa: BLE001 - any failure of a renderer is reported with its block
            raise RenderError(f"render block {name!r} failed: {type(error).__name__}: {error}") from error
        return match.group(1) + table.rstrip("\n") + "\n" + match.group(4)

    return BLOCK.sub(body, text)


def loose_tables(text: str) -> list[int]:
    """Line numbers (1-based) of tables outside every render block and not marked as documentation."""
    inside = set()
    for match in BLOCK.finditer(text):
        first = text.count("\n", 0, match.start()) + 1
        inside.update(range(first, first + match.group(0).count("\n") + 1))
    lines, out = text.splitlines(), []
    for number, line in enumerate(lines, 1):
        starts = line.startswith("|") and (number == 1 or not lines[number - 2].startswith("|"))
        if starts and number not in inside and (number < 2 or lines[number - 2].strip() != DOCUMENTATION):
            out.append(number)
    return out


def check(paths: list[Path], renderers: dict[str, Callable[[Path], str]], root: Path = ROOT) -> list[str]:
    """Every problem of ``paths``: blocks that differ from their renderer's output, unknown renderers, tables that
    are neither rendered nor documentation (empty: all as rendered)."""
    problems = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(root) if path.is_relative_to(root) else path
        try:
            rendered = render_text(text, renderers, root)
        except RenderError as error:
            problems.append(f"{name}: {error}")
            continue
        for old, new in zip(BLOCK.finditer(text), BLOCK.finditer(rendered)):
            if old.group("body") != new.group("body"):
                line = text.count("\n", 0, old.start()) + 1
                problems.append(f"{name}:{line}: block {old.group('name')!r} differs from what it renders "
                                f"(python benchmarks/render.py rewrites it)")
        problems += [f"{name}:{line}: a table that is neither rendered nor marked {DOCUMENTATION}"
                     for line in loose_tables(text)]
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is not as rendered")
    p.add_argument("paths", nargs="*", type=Path, help="Markdown files (default: README.md, benchmarks/README.md, docs/)")
    args = p.parse_args(argv)
    from readme_tables import RENDERERS

    paths = [path.resolve() for path in args.paths] or documents()
    if args.check:
        problems = check(paths, RENDERERS)
        print("\n".join(problems) or f"{len(paths)} files: every table as rendered")
        return 1 if problems else 0
    for path in paths:
        text = path.read_text(encoding="utf-8")
        try:
            new = render_text(text, RENDERERS)
        except RenderError as error:
            print(f"{path}: {error}", file=sys.stderr)
            return 1
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"rendered {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
