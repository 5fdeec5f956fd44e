"""The library's exception types and the one message style they share.

Every error says what is wrong, the value given, and the allowed values or the fix::

    raise ConfigError("target_ratio", 1.5, "a fraction in (0, 1)", hint="0.2 removes 20% of the parameters")
"""

from __future__ import annotations

import errno
from typing import Any


class AdaPrunerError(Exception):
    """Base class of every error the library raises on purpose."""


class ConfigError(AdaPrunerError, ValueError):
    """A user-supplied value is wrong (bad option, bad file, bad model, bad data).

    Args:
        what: the name of the option, file or object that is wrong.
        value: the value given.
        expected: what would have been accepted (allowed values, a range, a format).
        hint: how to fix it.
    """

    def __init__(self, what: str, value: Any, expected: str, hint: str | None = None) -> None:
        self.what, self.value, self.expected, self.hint = what, value, expected, hint
        message = f"{what}={value!r} is invalid: expected {expected}."
        if hint:
            message += f" Fix: {hint}"
        super().__init__(message)


class SearchFailed(AdaPrunerError, RuntimeError):
    """The search could not produce a plan (every trial failed, or a rank failed)."""


class SearchInterrupted(SearchFailed):
    """The search stopped early on request (the job is being preempted); its trace keeps every finished trial and
    a rerun on the same trace resumes after them."""


class DiskFull(AdaPrunerError, OSError):
    """Writing an output ran out of space (``ENOSPC``, or the quota: ``EDQUOT``); the writer kept the previous
    complete version of the file or directory.

    Args:
        path: what was being written.
        detail: the operating system's words.
    """

    def __init__(self, path: Any, detail: str = "") -> None:
        self.path = str(path)
        self.message = (f"disk full while writing {path}{f' ({detail})' if detail else ''}; the previous complete "
                        f"version is kept. Fix: free space on that disk (or raise the quota) and rerun, or write elsewhere")
        super().__init__(errno.ENOSPC, self.message)

    def __str__(self) -> str:
        return self.message
