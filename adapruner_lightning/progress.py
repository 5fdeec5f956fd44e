"""Progress bars (rich) for long loops, silenced in non-interactive or non-zero-rank processes on request."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")


def progress_enabled(requested: bool = True) -> bool:
    """False when ``requested`` is False or ``ADAPRUNER_PROGRESS=0`` is set."""
    return requested and os.environ.get("ADAPRUNER_PROGRESS", "1") != "0"


def make_progress(transient: bool = False) -> Progress:
    """A rich Progress with the library's columns."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    transient=transient)


def progress_bar(items: Iterable[T], description: str, *, enabled: bool = True, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` behind a rich progress bar (a plain loop when disabled)."""
    if not progress_enabled(enabled):
        yield from items
        return
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    with make_progress(transient=True) as bar:
        task = bar.add_task(description, total=total, info="")
        for item in items:
            yield item
            bar.advance(task)
