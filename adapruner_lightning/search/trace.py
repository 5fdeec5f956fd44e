"""The search trace: one JSONL line per finished trial, appended and fsync'ed as it finishes, read back on resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adapruner_lightning.errors import ConfigError

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
    """Finished trials of a previous run of the same problem (a torn last line, from a kill, is ignored).

    ``problem`` describes the search completely (model, samples, options; see ``PruningSession.problem``); a
    trace written for another problem is refused with the differing keys named, never resumed.
    """
    if not path.exists():
        return []
    records: list[TrialRecord] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            log.warning("trace %s: ignoring unreadable line %d (interrupted write)", path, number)
            continue
        if data.get("type") == "header":
            _check_header(path, data, problem)
        if data.get("type") == "trial":
            data.pop("type")
            records.append(TrialRecord(**data))
    return records


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


def _append(path: Path | None, line: str) -> None:
    if path is None:
        return
    with path.open("a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())
