"""The search trace: one JSONL line per finished trial, appended and fsync'ed as it finishes, read back on resume.

The first line is a header naming the search problem; a trace of another problem is refused. One process writes a
trace at a time (:func:`open_trace` takes its writer lock, :mod:`~adapruner_lightning.data.locks`). An append that
fails (a full disk) is cut back, so the file only ever holds complete lines; a last line torn by a crash (power
loss, a full disk on a file system that wrote part of it) is dropped when the trace is opened again, and that
trial runs again. Anything else that is not a trace line is refused with the file and line named.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from adapruner_lightning.data.locks import acquire, release
from adapruner_lightning.data.text import disk_full_detail
from adapruner_lightning.errors import ConfigError, DiskFull

log = logging.getLogger(__name__)


@dataclass
class TrialRecord:
    """One finished trial, as written to the trace.

    ``params`` holds every searched dimension (the inactive ones at their canonical value), ``active`` the
    dimensions that could change the plan at that point (None in traces that predate it), ``digest`` what the score
    depends on (``PruningSession.digest``; empty when the candidate failed before its selection), ``repeat_of`` the
    earlier trial whose plan this proposal repeated (registered with its score at no cost; None: scored here)."""

    trial: int
    params: dict[str, Any]
    candidate: dict[str, Any]
    sample_ids: list[str]
    score: float | None
    status: str  # "ok" or "failed" ("pending" while selected but not yet scored)
    seconds: float
    error: str = ""
    rank: int = 0  # the rank that scored it
    active: list[str] | None = None
    digest: str = ""
    repeat_of: int | None = None
    selection: Any = field(default=None, repr=False, compare=False)  # the scored selection, in memory only

    def to_json(self) -> str:
        """One JSONL line (the in-memory selection is not written: a resumed best trial is selected again)."""
        return json.dumps({"type": "trial", **self.plain()})

    def plain(self) -> dict[str, Any]:
        """The record as plain data, without the in-memory selection."""
        return {k: v for k, v in asdict(self).items() if k != "selection"}


def signature(problem: dict[str, Any]) -> str:
    """A short hash of a search's problem description (see :func:`read_trace`)."""
    return hashlib.sha256(json.dumps(problem, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (``pruning.round_to``, ``model.fingerprint``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new), key=str)
                for d in differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".") or "value"]


def read_trace(path: Path, problem: dict[str, Any]) -> list[TrialRecord]:
    """Finished trials of a previous run of the same problem (a torn last line, cut short by a crash, is ignored).

    ``problem`` describes the search completely (model, samples, options; see ``PruningSession.problem``); a
    trace written for another problem is refused with the differing keys named, never resumed.

    Raises:
        ConfigError: the trace belongs to another problem, or is no trace: a first line that is not a header, an
            unreadable line before the last, a trial line of other fields, trials out of order.
    """
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    lines, torn = text.splitlines(), not text.endswith("\n")  # a write cut short leaves no newline
    records: list[TrialRecord] = []
    for number, line in enumerate(lines, 1):
        data = _parse(path, number, line, last=number == len(lines) and torn)
        if data is None:
            continue
        if number == 1 and data.get("type") != "header":
            raise _damaged(path, number, "a header line first ({\"type\": \"header\", ...})",
                           "this file is not a search trace of adapruner; pass another trace path or move the file")
        if data.get("type") == "header":
            _check_header(path, data, problem)
        elif data.get("type") == "trial":
            records.append(_record(path, number, data, len(records)))
    return records


def _parse(path: Path, number: int, line: str, *, last: bool) -> dict[str, Any] | None:
    """One line as a dict; None for a torn last line (an interrupted write, logged)."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        if last:
            log.warning("trace %s: ignoring its incomplete last line %d (an interrupted write)", path, number)
            return None
        raise _damaged(path, number, "one JSON object per line", "the line is unreadable (the file was edited or "
                       "damaged); delete that line (its trial runs again) or the whole trace") from None
    if not isinstance(data, dict):
        raise _damaged(path, number, "one JSON object per line", "delete the line or the whole trace")
    return data


def _record(path: Path, number: int, data: dict[str, Any], expected: int) -> TrialRecord:
    names = {f.name for f in fields(TrialRecord)} - {"selection"}
    data = {k: v for k, v in data.items() if k != "type"}
    if set(data) - names or {"trial", "params", "status"} - set(data) or data.get("trial") != expected:
        raise _damaged(path, number, f"trial {expected} with the fields {sorted(names)}",
                       f"the line holds {sorted(data)} (trial {data.get('trial')!r}): the trace was written by "
                       f"another version or edited; delete it to search afresh")
    try:
        return TrialRecord(**data)
    except TypeError as exc:
        raise _damaged(path, number, "a complete trial record", f"{exc}; delete the trace to search afresh") from exc


def _damaged(path: Path, number: int, expected: str, hint: str) -> ConfigError:
    return ConfigError("search trace", f"{path}:{number}", expected, hint=hint)


def _check_header(path: Path, header: dict[str, Any], problem: dict[str, Any]) -> None:
    if header.get("signature") == signature(problem):
        return
    stored = header.get("problem")
    current = json.loads(json.dumps(problem, default=str))  # as the header stores it (tuples as lists ...)
    diff = differences(stored, current) if stored is not None else ["the problem description (the trace predates it)"]
    raise ConfigError("trace_path", str(path), "a trace of this search problem",
                      hint=f"the trace was written for another model, data or options (differs in: "
                           f"{', '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}); delete it or pass another trace_path")


def write_header(path: Path, problem: dict[str, Any]) -> None:
    """Start a new trace at ``path`` with the problem it belongs to."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _append(path, json.dumps({"type": "header", "signature": signature(problem), "problem": problem}, default=str))


def open_trace(path: Path, problem: dict[str, Any]) -> list[TrialRecord]:
    """Open the trace at ``path`` for writing (this process's writer lock, see :func:`trace_writer`): drop a torn
    last line, read the finished trials of ``problem`` (:func:`read_trace`), start the file with its header when it
    is new or empty.

    Raises:
        ConfigError: another process is writing this trace (named), or :func:`read_trace` refuses the file.
    """
    acquire(path, what="trace_path")
    try:
        _drop_torn_tail(path)
        done = read_trace(path, problem)
        if not path.exists() or path.stat().st_size == 0:
            write_header(path, problem)
    except BaseException:
        release(path)
        raise
    return done


@contextlib.contextmanager
def trace_writer(path: Path | None, *, enabled: bool = True) -> Iterator[None]:
    """The block in which this process writes the trace at ``path`` (opened with :func:`open_trace`, on rank 0):
    its writer lock is given back when the block ends, however it ends."""
    try:
        yield
    finally:
        if path is not None and enabled:
            release(path)


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line without its newline (a write interrupted by a crash), so the next trial starts a line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        log.warning("trace %s: dropping its incomplete last line (%d bytes, an interrupted write); that trial runs "
                    "again", path, len(data) - keep)
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())


def _append(path: Path | None, line: str) -> None:
    """Append ``line`` and fsync; a failed write (a full disk) is cut back, so the trace keeps complete lines only.

    Raises:
        DiskFull: no space for the line (the trace is as it was before).
    """
    if path is None:
        return
    data = memoryview((line + "\n").encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end)
                os.fsync(fd)
            detail = disk_full_detail(error)
            if detail is not None:
                raise DiskFull(path, detail) from error
            raise
    finally:
        os.close(fd)
