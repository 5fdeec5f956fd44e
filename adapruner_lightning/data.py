"""The embedded real English text (Jane Austen's six novels) and plain-text loading and windowing.

The novels come from Debian's package ``r-cran-janeaustenr`` (an R data package: one character vector per
novel, one element per printed line). :func:`fetch_austen` downloads and unpacks it with ``apt-get download``
and ``dpkg-deb -x``; :func:`load_austen_books` reads R's lazy-load database with the ``rdata`` package, joins
the printed lines into paragraphs and caches each novel as a UTF-8 ``.txt`` file.

The split into calibration and evaluation novels is fixed for the whole project, see
:data:`CALIBRATION_BOOKS` and :data:`EVALUATION_BOOKS`.

Run ``adapruner setup`` once on a new machine to fetch and cache the text.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from adapruner_lightning.errors import AdaPrunerError, ConfigError

logger = logging.getLogger(__name__)

#: The novels used for calibration, the search objective and fine-tuning. Nothing else may train or select.
CALIBRATION_BOOKS: tuple[str, ...] = ("Emma", "Mansfield Park", "Pride and Prejudice", "Sense and Sensibility")
#: The held-out novels used only for evaluation (perplexity, offline zero-shot tasks).
EVALUATION_BOOKS: tuple[str, ...] = ("Persuasion", "Northanger Abbey")
"""The calibration / evaluation split is fixed for the whole project: calibration samples, the search
objective and any fine-tuning use only :data:`CALIBRATION_BOOKS`; evaluation uses only :data:`EVALUATION_BOOKS`."""

#: Title -> name of the R object holding the novel in ``janeaustenr``.
R_OBJECTS: dict[str, str] = {
    "Emma": "emma",
    "Mansfield Park": "mansfieldpark",
    "Pride and Prejudice": "prideprejudice",
    "Sense and Sensibility": "sensesensibility",
    "Persuasion": "persuasion",
    "Northanger Abbey": "northangerabbey",
}

DEBIAN_PACKAGE = "r-cran-janeaustenr"
SYSTEM_R_PACKAGE = Path("/usr/lib/R/site-library/janeaustenr")
_R_PACKAGE_SUBDIR = Path("usr/lib/R/site-library/janeaustenr")
_TEXT_SUFFIXES = (".txt", ".md")


def cache_dir() -> Path:
    """Return the library's cache directory: ``$ADAPRUNER_CACHE`` if set, else ``~/.cache/adapruner``.

    Returns:
        The directory (not created here).
    """
    env = os.environ.get("ADAPRUNER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "adapruner"


# --------------------------------------------------------------------------------------------- fetching


def _has_rdata(package_dir: Path) -> bool:
    return (package_dir / "data" / "Rdata.rdx").is_file() and (package_dir / "data" / "Rdata.rdb").is_file()


def _manual_instructions(target: Path) -> str:
    return (
        f"install it by hand: `apt-get install {DEBIAN_PACKAGE}` (as root; run `apt-get update` first on a "
        f"fresh machine), or download the .deb (`apt-get download {DEBIAN_PACKAGE}` or from "
        f"https://packages.debian.org/{DEBIAN_PACKAGE}) and unpack it with `dpkg-deb -x {DEBIAN_PACKAGE}_*.deb "
        f"{target}` (set ADAPRUNER_CACHE to choose the cache directory), then run `adapruner setup` again"
    )


def _run(command: list[str], cwd: Path, target: Path) -> None:
    """Run one packaging command, turning any failure into an :class:`AdaPrunerError` with the manual fix."""
    if shutil.which(command[0]) is None:
        raise AdaPrunerError(f"`{command[0]}` is not available to fetch the Austen novels; {_manual_instructions(target)}")
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise AdaPrunerError(
            f"`{' '.join(command)}` failed (exit {result.returncode}: {' / '.join(detail)}); "
            f"{_manual_instructions(target)}"
        )


def fetch_austen(target: Path | None = None) -> Path:
    """Make the ``janeaustenr`` R package available locally and return its directory.

    Looks, in order, at ``target`` (default ``cache_dir()/janeaustenr``), at the system R library
    (``/usr/lib/R/site-library/janeaustenr``, only when ``target`` is not given), and otherwise downloads the
    Debian package with ``apt-get download r-cran-janeaustenr`` into a temporary directory and unpacks it with
    ``dpkg-deb -x`` into ``target``.

    Args:
        target: where to unpack the ``.deb``; default ``cache_dir()/janeaustenr``.

    Returns:
        The R package directory (``<target>/usr/lib/R/site-library/janeaustenr``), holding ``data/Rdata.rdx``.

    Raises:
        AdaPrunerError: ``apt-get`` or ``dpkg-deb`` is missing or fails; the message says what to install by hand.
    """
    explicit = target is not None
    target = Path(target) if explicit else cache_dir() / "janeaustenr"
    package_dir = target / _R_PACKAGE_SUBDIR
    if _has_rdata(package_dir):
        return package_dir
    if not explicit and _has_rdata(SYSTEM_R_PACKAGE):
        return SYSTEM_R_PACKAGE
    logger.info("fetching the Austen novels: apt-get download %s -> %s", DEBIAN_PACKAGE, target)
    with tempfile.TemporaryDirectory(prefix="adapruner-deb-") as tmp:
        _run(["apt-get", "download", DEBIAN_PACKAGE], Path(tmp), target)
        debs = sorted(Path(tmp).glob(f"{DEBIAN_PACKAGE}_*.deb"))
        if not debs:
            raise AdaPrunerError(f"`apt-get download {DEBIAN_PACKAGE}` produced no .deb; {_manual_instructions(target)}")
        target.mkdir(parents=True, exist_ok=True)
        _run(["dpkg-deb", "-x", str(debs[-1]), str(target)], Path(tmp), target)
    if not _has_rdata(package_dir):
        raise AdaPrunerError(f"{debs[-1].name} did not contain {package_dir}/data/Rdata.rdx; {_manual_instructions(target)}")
    return package_dir


# ------------------------------------------------------------------------------------- R lazy-load DB


def _parse_r(blob: bytes) -> Any:
    """Parse and convert one serialised R object (gzip'd or plain) with the ``rdata`` package."""
    from rdata import conversion, parser

    return conversion.convert(parser.parse_data(blob, extension=".rds"))


def _decompress_entry(blob: bytes, compressed: int) -> bytes:
    """Undo R's lazy-load compression of one ``.rdb`` entry (4-byte big-endian length, then the stream)."""
    (length,) = struct.unpack(">I", blob[:4])
    if compressed in (2, 3):  # one type byte follows: '0' none, '2' bzip2, 'Z' xz
        kind, payload = blob[4:5], blob[5:]
        if kind == b"2":
            import bz2

            payload = bz2.decompress(payload)
        elif kind == b"Z":
            import lzma

            payload = lzma.decompress(payload)
        elif kind != b"0":
            payload = zlib.decompress(payload)
    else:
        payload = zlib.decompress(blob[4:]) if compressed else blob[4:]
    if len(payload) != length:
        raise AdaPrunerError(f"corrupt R lazy-load entry: expected {length} bytes, got {len(payload)}")
    return payload


def read_lazyload_db(data_dir: Path) -> dict[str, Any]:
    """Read every object of an R lazy-load database (``Rdata.rdx`` + ``Rdata.rdb``).

    Args:
        data_dir: the R package's ``data`` directory.

    Returns:
        Object name -> the object converted by ``rdata`` (a character vector becomes a numpy array of str).
    """
    index = _parse_r((data_dir / "Rdata.rdx").read_bytes())
    compressed = int(index["compressed"][0])
    rdb = (data_dir / "Rdata.rdb").read_bytes()
    objects = {}
    for name, (offset, length) in index["variables"].items():
        blob = rdb[int(offset) : int(offset) + int(length)]
        objects[str(name)] = _parse_r(_decompress_entry(blob, compressed))
    return objects


def lines_to_paragraphs(lines: Sequence[str | None]) -> str:
    """Join printed lines into paragraphs: a blank line ends one, wrapped lines are joined with a space.

    Args:
        lines: one element per printed line (``None``, R's ``NA``, counts as blank).

    Returns:
        The paragraphs separated by ``"\\n\\n"``, without leading or trailing blank lines.
    """
    paragraphs: list[str] = []
    current: list[str] = []
    for line in lines:
        stripped = (line or "").strip()
        if stripped:
            current.append(stripped)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def _book_cache_path(title: str) -> Path:
    return cache_dir() / "austen" / f"{title}.txt"


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so a reader (or a resumed run)
    sees the old file or the new one, never a torn one; missing parent folders are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def load_austen_books() -> dict[str, str]:
    """Return Jane Austen's six novels, title -> full text (paragraphs separated by ``"\\n\\n"``).

    The first call fetches the R package (see :func:`fetch_austen`) and writes each novel to
    ``cache_dir()/austen/<title>.txt``; later calls read those files only.

    Returns:
        The novels in the order ``CALIBRATION_BOOKS + EVALUATION_BOOKS``.

    Raises:
        AdaPrunerError: the package could not be fetched (the message says how to install it by hand).
    """
    titles = CALIBRATION_BOOKS + EVALUATION_BOOKS
    if all(_book_cache_path(t).is_file() for t in titles):
        return {t: _book_cache_path(t).read_text(encoding="utf-8") for t in titles}
    objects = read_lazyload_db(fetch_austen() / "data")
    missing = [R_OBJECTS[t] for t in titles if R_OBJECTS[t] not in objects]
    if missing:
        raise AdaPrunerError(f"the janeaustenr data lacks {missing}; found {sorted(objects)}")
    books = {t: lines_to_paragraphs([None if s is None else str(s) for s in objects[R_OBJECTS[t]]]) for t in titles}
    for title, text in books.items():
        write_text_atomic(_book_cache_path(title), text)
    logger.info("cached the Austen novels in %s", cache_dir() / "austen")
    return books


# ---------------------------------------------------------------------------------------- user texts


def _read_one(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ConfigError("text file", str(path), "a UTF-8 text file with some text", hint="remove the empty file or fill it")
    return text


def _files_of(path: Path) -> list[Path]:
    if not path.exists():
        raise ConfigError(
            "text path", str(path), "an existing .txt file or a directory of .txt/.md files",
            hint="the path does not exist; check it (relative paths are relative to the working directory)",
        )
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _TEXT_SUFFIXES)
    if not files:
        raise ConfigError(
            "text directory", str(path), "a directory holding at least one .txt or .md file", hint="add text files or pass another path"
        )
    return files


def read_texts(paths: Sequence[str | Path]) -> dict[str, str]:
    """Read plain-text files: each path is a ``.txt`` file or a directory of ``.txt``/``.md`` files.

    Args:
        paths: files or directories (a directory is read non-recursively, files in name order).

    Returns:
        File stem -> file content (UTF-8).

    Raises:
        ConfigError: a path does not exist, a directory has no text file, a file is empty, or two files share a stem.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    texts: dict[str, str] = {}
    for path in paths:
        for file in _files_of(Path(path).expanduser()):
            if file.stem in texts:
                raise ConfigError("text file", str(file), "file names with distinct stems", hint=f"rename one of the files named {file.stem!r}")
            texts[file.stem] = _read_one(file)
    return texts


def _austen_texts(selector: str) -> dict[str, str]:
    groups = {"calibration": CALIBRATION_BOOKS, "evaluation": EVALUATION_BOOKS}
    titles = groups.get(selector, (selector,))
    allowed = [f"austen:{name}" for name in (*groups, *R_OBJECTS)]
    if any(t not in R_OBJECTS for t in titles):
        raise ConfigError("text spec", f"austen:{selector}", f"one of {allowed}")
    books = load_austen_books()
    return {t: books[t] for t in titles}


def texts_for(spec: str | Sequence[str]) -> dict[str, str]:
    """Resolve a text spec into name -> text.

    Args:
        spec: ``"austen:calibration"``, ``"austen:evaluation"``, ``"austen:<Title>"`` (e.g.
            ``"austen:Emma"``), a path (file or directory, see :func:`read_texts`), or a sequence mixing these.

    Returns:
        Name -> text; the Austen novels are keyed by title, files by stem.

    Raises:
        ConfigError: an unknown ``austen:`` selector or a bad path.
    """
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    texts: dict[str, str] = {}
    for item in items:
        item = str(item)
        texts.update(_austen_texts(item[len("austen:") :]) if item.startswith("austen:") else read_texts([item]))
    return texts


# ----------------------------------------------------------------------------------------- tokenising


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Tokenise a whole text once, without special tokens and without the too-long-sequence warning.

    Args:
        tokenizer: a Hugging Face tokenizer.
        text: any length of text.

    Returns:
        The token ids.
    """
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def tokenize_windows(tokenizer: Any, text: str, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Tokenise ``text`` once and cut it into consecutive non-overlapping windows, dropping the incomplete tail.

    Args:
        tokenizer: a Hugging Face tokenizer (no special tokens are added).
        text: the text.
        seq_len: tokens per window.
        max_windows: keep at most this many windows (the first ones).

    Returns:
        A ``LongTensor`` of shape ``[n, seq_len]``.

    Raises:
        ConfigError: ``seq_len`` < 1, or the text is shorter than one window.
    """
    if seq_len < 1:
        raise ConfigError("seq_len", seq_len, "an integer >= 1")
    ids = encode_text(tokenizer, text)
    n = len(ids) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise ConfigError(
            "text", f"{len(text)} characters = {len(ids)} tokens", f"at least seq_len={seq_len} tokens",
            hint=f"use a longer text or a seq_len <= {len(ids)}",
        )
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


# ------------------------------------------------------------------------------------ `adapruner setup`


def _default_tokenizer() -> Any | None:
    """The embedded model's tokenizer, or ``None`` when it is not installed (token counts are then skipped)."""
    from transformers import AutoTokenizer

    from adapruner_lightning import models

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
    from rich.progress import track
    from rich.table import Table

    table = Table(title=f"Jane Austen's novels (cached in {cache_dir() / 'austen'})")
    for column in ("book", "split", "characters", "paragraphs", *(["tokens"] if tokenizer is not None else [])):
        table.add_column(column, justify="left" if column in ("book", "split") else "right")
    rows = track(books.items(), description="counting tokens", disable=tokenizer is None, transient=True)
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
