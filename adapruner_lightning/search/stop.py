"""Stopping a search at a round boundary when its job is being preempted (a cluster's requeue signal).

A signal handler (the callback's, during ``setup``; :mod:`~adapruner_lightning.lightning._compat`) only records the
request with :func:`request_stop`: it is async-signal-safe and interrupts no trial, no collective and no trace
write. Each round of the search gathers every rank's request with its records, so all ranks see it in the same
round: the round's trials are registered (and appended to the trace), then :func:`raise_if_stopped` ends the
search on every rank with :class:`~adapruner_lightning.errors.SearchInterrupted`. The requeued job resumes the
trace after the last finished trial.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapruner_lightning.errors import SearchInterrupted

_REQUESTS: list[str] = []  # list.append is atomic: safe from a signal handler


def request_stop(reason: str) -> None:
    """Ask the running search to stop after its current round (``reason``: what asked, e.g. ``"SIGUSR1"``)."""
    _REQUESTS.append(reason)


def stop_reason() -> str | None:
    """The first pending stop request of this process, or None."""
    return _REQUESTS[0] if _REQUESTS else None


def clear_stop() -> None:
    """Forget pending stop requests (when the handler that made them is removed)."""
    _REQUESTS.clear()


def first_stop(gathered: list[dict[str, Any] | None]) -> tuple[int, str] | None:
    """The first rank whose envelope of a round asked to stop (``"stop"``: a reason), with its reason; None."""
    return next(((rank, e["stop"]) for rank, e in enumerate(gathered) if e is not None and e.get("stop")), None)


def raise_if_stopped(gathered: list[dict[str, Any]], finished: int, trace: Path | None) -> None:
    """Raise :class:`SearchInterrupted` on every rank when any rank's envelope of this round asked to stop.

    Args:
        gathered: the round's envelopes of every rank (each may hold ``"stop"``: a reason).
        finished: trials finished so far (all in the trace).
        trace: the trace path, named in the message.
    """
    asked = first_stop(gathered)
    if asked is None:
        return
    rank, reason = asked
    where = f"the trace {trace} keeps them and a rerun on it resumes there" if trace else "no trace was kept"
    raise SearchInterrupted(f"the search stopped on {reason} (rank {rank}) after {finished} finished trials; {where}")
