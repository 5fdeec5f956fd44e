"""The search trace: one JSONL line per finished trial, appended and fsync'ed as it finishes, read back on resume.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adapruner_lightning.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class TrialRecord:
    """One finished trial, as written to the trace."""

    trial: int
    params: dict[str, Any]
    candidate: dict[str, Any]
    sample_ids: list[str]
    score: float | None
    status: str  # "ok" or "failed"
    seconds: float
    error: str = ""

    def to_json(self) -> str:
        """One JSONL line."""
        return json.dumps({"type": "trial", **asdict(self)})


def read_trace(path: Path, signature: str) -> list[TrialRecord]:
    """Finished trials of a previous run of the same space (a torn last line, from a kill, is ignored)."""
    if not path.exists():
        return []
    records: list[TrialRecord] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            log.warning("trace %s: ignoring unreadable line %d (interrupted write)", path, number)
            continue
        if data.get("type") == "header" and data.get("signature") != signature:
            raise ConfigError("trace_path", str(path), f"a trace of this search space (signature {signature})",
                              hint="it was written by a different search; delete it or pass another trace_path")
        if data.get("type") == "trial":
            data.pop("type")
            records.append(TrialRecord(**data))
    return records


def _append(path: Path | None, line: str) -> None:
    if path is None:
        return
    with path.open("a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())
