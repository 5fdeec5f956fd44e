"""The embedded real English text: Jane Austen's six novels (only the default needs this module).

The novels come from Debian's package ``r-cran-janeaustenr`` (an R data package: one character vector per
novel, one element per printed line). :func:`fetch_austen` downloads and unpacks it with ``apt-get download``
and ``dpkg-deb -x``; :func:`load_austen_books` reads R's lazy-load database with the ``rdata`` package, joins
the printed lines into paragraphs and caches each novel as a UTF-8 ``.txt`` file.

The split into calibration and evaluation novels is fixed for the whole project, see
:data:`CALIBRATION_BOOKS` and :data:`EVALUATION_BOOKS`.

Run ``adapruner setup`` once on a new machine to fetch and cache the text.
"""

from __future__ import annotations

import logging
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapruner_lightning.data.text import cache_dir, write_text_atomic
from adapruner_lightning.errors import AdaPrunerError, ConfigError

logger = logging.getLogger(__name__)


#: The novels used for calibration, the search objective and fine-tuning. Nothing else may train or select.
CALIBRATION_BOOKS: tuple[str, ...] = ("Emma", "Mansfield Park", "Pride and Prejudice", "Sense and Sensibility")


#: The held-out novels used only for evaluation (perplexity, offline zero-shot tasks).
EVALUATION_BOOKS: tuple[str, ...] = ("Persuasion", "Northanger Abbey")


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


def austen_texts(selector: str) -> dict[str, str]:
    """The novels named by ``selector``: ``calibration``, ``evaluation`` or one title (``austen:<selector>``)."""
    groups = {"calibration": CALIBRATION_BOOKS, "evaluation": EVALUATION_BOOKS}
    titles = groups.get(selector, (selector,))
    allowed = [f"austen:{name}" for name in (*groups, *R_OBJECTS)]
    if any(t not in R_OBJECTS for t in titles):
        raise ConfigError("text spec", f"austen:{selector}", f"one of {allowed}")
    books = load_austen_books()
    return {t: books[t] for t in titles}
