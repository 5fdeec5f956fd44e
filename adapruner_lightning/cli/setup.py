"""``adapruner setup``: fetch, parse and cache the embedded text (Jane Austen's novels) and print their sizes.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from adapruner_lightning.data.austen import CALIBRATION_BOOKS, EVALUATION_BOOKS, load_austen_books
from adapruner_lightning.data.text import cache_dir, encode_text
from adapruner_lightning.errors import AdaPrunerError
from adapruner_lightning.progress import progress_bar

logger = logging.getLogger(__name__)


def _default_tokenizer() -> Any | None:
    """The embedded model's tokenizer, or ``None`` when it is not installed (token counts are then skipped)."""
    from transformers import AutoTokenizer

    from adapruner_lightning.data import models

    try:
        converted = models.embedded_model_dir()
        if (converted / "config.json").is_file():
            return AutoTokenizer.from_pretrained(converted)
        gguf = models.embedded_gguf_path()
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as error:  # noqa: BLE001 - token counts are optional
        logger.warning("no tokenizer for token counts (%s); skipping them", error)
        return None


def _print_table(books: dict[str, str], tokenizer: Any | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Jane Austen's novels (cached in {cache_dir() / 'austen'})")
    for column in ("book", "split", "characters", "paragraphs", *(["tokens"] if tokenizer is not None else [])):
        table.add_column(column, justify="left" if column in ("book", "split") else "right")
    rows = progress_bar(list(books.items()), "counting tokens", enabled=tokenizer is not None)
    for title, text in rows:
        split = "calibration" if title in CALIBRATION_BOOKS else "evaluation"
        cells = [title, split, f"{len(text):,}", f"{text.count(chr(10) * 2) + 1:,}"]
        if tokenizer is not None:
            cells.append(f"{len(encode_text(tokenizer, text)):,}")
        table.add_row(*cells)
    Console().print(table)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``adapruner setup`` command: fetch, parse and cache the Austen novels and print their sizes.

    Args:
        argv: command-line arguments (without the ``setup`` word).

    Returns:
        The exit code (0 on success, 1 when the text could not be fetched).
    """
    parser = argparse.ArgumentParser(
        prog="adapruner setup",
        description=(
            "Fetch Jane Austen's six novels (Debian package r-cran-janeaustenr, via apt-get download + dpkg-deb), "
            f"cache them as text in $ADAPRUNER_CACHE/austen (now {cache_dir() / 'austen'}) and print their sizes. "
            f"Calibration novels: {', '.join(CALIBRATION_BOOKS)}; held-out evaluation novels: {', '.join(EVALUATION_BOOKS)}."
        ),
    )
    parser.add_argument("--no-tokens", action="store_true", help="skip the token counts (no tokenizer is loaded)")
    parser.add_argument("--tokenizer", default=None, help="model dir or hub id whose tokenizer counts tokens (default: the embedded SmolLM2)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        books = load_austen_books()
    except AdaPrunerError as error:
        logger.error("%s", error)
        return 1
    tokenizer = None
    if not args.no_tokens:
        if args.tokenizer:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        else:
            tokenizer = _default_tokenizer()
    _print_table(books, tokenizer)
    return 0
