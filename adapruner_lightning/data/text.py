"""Plain text: the cache directory, atomic writes, text files and specs, tokenisation into token windows.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from adapruner_lightning.errors import ConfigError, DiskFull

"""The calibration / evaluation split is fixed for the whole project: calibration samples, the search
objective and any fine-tuning use only :data:`CALIBRATION_BOOKS`; evaluation uses only :data:`EVALUATION_BOOKS`."""


_TEXT_SUFFIXES = (".txt", ".md")


def cache_dir() -> Path:
    """Return the library's cache directory: ``$ADAPRUNER_CACHE`` if set, else ``~/.cache/adapruner``.

    Returns:
        The directory (not created here).
    """
    env = os.environ.get("ADAPRUNER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "adapruner"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write, a file or a directory; on success it takes ``path``'s
    place by rename, on failure it is removed. Readers (and a resumed run) see the old version or the new one,
    never a torn one. A directory's previous version is moved aside first and put back if the swap fails.
    Missing parent folders are created. The one atomic-write helper of the library::

        with atomic_path(export_dir) as tmp:
            model.save_pretrained(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        _swap(tmp, path)
    except BaseException as error:
        _remove(tmp)
        full = disk_full_detail(error)
        if full is not None and not isinstance(error, DiskFull):
            raise DiskFull(path, full) from error
        raise


#: ``errno`` values that mean "no space left": the disk, or the user's quota
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def disk_full_detail(error: BaseException) -> str | None:
    """The operating system's words when ``error`` (or an error it was raised from) is a full disk or quota,
    else None. Libraries that write through their own code (safetensors, the tokenizers) report it as text
    (``No space left on device (os error 28)``), so their messages are read too."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            return error.strerror or os.strerror(error.errno)
        text = str(error)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return text.splitlines()[0][:200]
        error = error.__cause__ or error.__context__
    return None


def _swap(tmp: Path, path: Path) -> None:
    if not tmp.is_dir():
        os.replace(tmp, path)
        return
    old = path.with_name(f".{path.name}.old")
    _remove(old)
    if path.exists():
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old.exists():  # put the previous version back
            os.replace(old, path)
        raise
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _read_one(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("text file", str(path), "a UTF-8 text file",
                          hint=f"it is not UTF-8 ({exc.reason} at byte {exc.start}); convert it (iconv -t utf-8) or "
                               f"leave it out") from exc
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


#: Text-spec prefixes served by a loader instead of the file system: ``"<prefix>:<selector>"`` ->
#: ``"module:function"``, called with the selector and returning name -> text (imported on first use, so
#: generic code never loads a corpus it does not ask for). The embedded Austen corpus is the built-in one.
TEXT_SOURCES: dict[str, str] = {"austen": "adapruner_lightning.data.austen:austen_texts"}


def register_text_source(prefix: str, loader: str) -> None:
    """Serve text specs ``"<prefix>:<selector>"`` with ``loader`` (``"module:function"``, see :data:`TEXT_SOURCES`)."""
    if prefix in TEXT_SOURCES and TEXT_SOURCES[prefix] != loader:
        raise ConfigError("text source prefix", prefix, "a prefix not registered yet", hint=f"taken by {TEXT_SOURCES[prefix]}")
    TEXT_SOURCES[prefix] = loader


def _from_source(spec: str) -> dict[str, str]:
    import importlib

    prefix, selector = spec.split(":", 1)
    module, function = TEXT_SOURCES[prefix].split(":")
    return getattr(importlib.import_module(module), function)(selector)


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
        texts.update(_from_source(item) if item.split(":", 1)[0] in TEXT_SOURCES else read_texts([item]))
    return texts


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Tokenise a whole text once, without special tokens and without the too-long-sequence warning.

    Args:
        tokenizer: a Hugging Face tokenizer.
        text: any length of text.

    Returns:
        The token ids.
    """
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def uses_bos(tokenizer: Any) -> bool:
    """True when the model behind ``tokenizer`` expects every sequence to start with its BOS token.

    Decided as lm-evaluation-harness decides it for ``HFLM`` (0.4.9+, ``add_bos_token`` unset): the tokenizer's
    own default, i.e. whether ``tokenizer("a")`` starts with ``bos_token_id`` (Llama-3, Gemma: yes; SmolLM2,
    Qwen2: no); Gemma tokenizers always (Gemma models were trained with BOS and degrade badly without it).
    The one place that decides it: perplexity, calibration, search-objective and fine-tuning windows
    (:func:`cut_windows`) and zero-shot contexts (``evaluation.loglik.encode_pair``) all follow it.

    Args:
        tokenizer: a Hugging Face tokenizer.

    Returns:
        Whether windows and contexts get a leading BOS.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    if "gemma" in type(tokenizer).__name__.lower():
        return True
    ids = list(tokenizer("a", verbose=False)["input_ids"])
    return bool(ids) and ids[0] == bos


def cut_windows(tokenizer: Any, ids: Sequence[int], seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Cut a token stream into consecutive non-overlapping windows of ``seq_len`` tokens, dropping the tail.

    When the model expects BOS (:func:`uses_bos`) every window is ``[BOS] + seq_len - 1`` stream tokens, so
    each window starts the way the model saw its training sequences start; otherwise ``seq_len`` stream tokens.

    Args:
        tokenizer: the tokenizer ``ids`` came from (:func:`encode_text`, no special tokens).
        ids: the token stream.
        seq_len: tokens per window, BOS included.
        max_windows: keep at most this many windows (the first ones).

    Returns:
        A ``LongTensor`` of shape ``[n, seq_len]`` (``n`` may be 0).
    """
    bos = uses_bos(tokenizer)
    step = seq_len - 1 if bos else seq_len
    n = len(ids) // step if step > 0 else 0
    n = n if max_windows is None else min(n, max_windows)
    body = torch.tensor(list(ids[: n * step]), dtype=torch.long).view(n, step)
    if not bos:
        return body
    return torch.cat([torch.full((n, 1), int(tokenizer.bos_token_id), dtype=torch.long), body], dim=1)


def tokenize_windows(tokenizer: Any, text: str, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Tokenise ``text`` once and cut it into consecutive non-overlapping windows (:func:`cut_windows`).

    Args:
        tokenizer: a Hugging Face tokenizer (BOS starts each window when the model expects it, :func:`uses_bos`).
        text: the text.
        seq_len: tokens per window.
        max_windows: keep at most this many windows (the first ones).

    Returns:
        A ``LongTensor`` of shape ``[n, seq_len]``.

    Raises:
        ConfigError: ``seq_len`` < 2 with BOS (< 1 without), or the text is shorter than one window.
    """
    if seq_len < 1 + uses_bos(tokenizer):
        raise ConfigError("seq_len", seq_len, f"an integer >= {1 + uses_bos(tokenizer)}")
    ids = encode_text(tokenizer, text)
    windows = cut_windows(tokenizer, ids, seq_len, max_windows)
    if windows.shape[0] < 1:
        raise ConfigError(
            "text", f"{len(text)} characters = {len(ids)} tokens", f"at least seq_len={seq_len} tokens",
            hint=f"use a longer text or a seq_len <= {len(ids)}",
        )
    return windows
