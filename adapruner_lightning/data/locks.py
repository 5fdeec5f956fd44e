"""One writer per output: a lock file beside the path being written, naming the process that holds it.

``.NAME.lock`` beside ``NAME`` (an output directory, a search trace) holds the writer's process id, host and
start time, and is held with ``flock`` for as long as the writer runs: the kernel releases it when the process
dies however it dies (``SIGKILL``, out of memory, a node reboot), so a lock whose ``flock`` is free is stale by
construction and is taken over with a log line naming the dead process. A second process on the same path is
refused with a :class:`~adapruner_lightning.errors.ConfigError` naming the running one.

Locks are per process and re-entrant: the same process may take the same lock again (the callback's output
directory and its search trace, a resumed ``fit`` in the same interpreter). In a multi-rank job only rank 0
writes, so only rank 0 locks (ranks never refuse each other). Where the file system has no ``flock`` (some
network mounts), the recorded process id is checked instead (alive on this host: running; another host: refused,
naming it, with the hint to delete the lock file once that process is gone).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapruner_lightning.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class _Held:
    fd: int
    file: Path
    count: int = 1


#: resolved target -> the lock this process holds on it
_HELD: dict[str, _Held] = {}


def lock_file(target: str | Path) -> Path:
    """The lock file of ``target``: ``.NAME.lock`` in the same directory (outside it: an atomic replacement of a
    directory target keeps the lock)."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv[:3])[:200]}


def _read(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    return (f"process {holder.get('pid', '?')} on {holder.get('host', '?')} (since {holder.get('since', '?')}, "
            f"{holder.get('command') or 'command unknown'})")


def _alive_here(holder: dict[str, Any]) -> bool:
    """Whether the recorded process still runs on this host (same pid and start time)."""
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = holder.get("process_start")
    return started is None or _process_start(pid) in (None, started)


def _refuse(target: Path, what: str, holder: dict[str, Any], file: Path, hint: str = "") -> ConfigError:
    return ConfigError(what, str(target), "a path no other process is writing",
                       hint=f"{_describe(holder)} is writing it (lock {file}); wait for it to finish, stop it, or "
                            f"choose another path{hint}")


def _take(file: Path, target: Path, what: str) -> int:
    """Open and ``flock`` the lock file (retrying when it was replaced meanwhile); the descriptor."""
    import fcntl

    while True:
        fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refuse(target, what, _read(file), file) from None
        except OSError as error:  # no flock on this file system: the recorded pid decides
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            _check_pid(file, target, what)
            return fd
        try:
            if os.fstat(fd).st_ino == os.stat(file).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # released and removed by its holder between our open and flock: take the new file


def _check_pid(file: Path, target: Path, what: str) -> None:
    holder = _read(file)
    if not holder or holder.get("pid") == os.getpid():
        return
    if holder.get("host") != socket.gethostname():
        raise _refuse(target, what, holder, file, hint="; if that process is gone, delete the lock file")
    if _alive_here(holder):
        raise _refuse(target, what, holder, file)


def acquire(target: str | Path, *, what: str = "output path") -> Path:
    """Take the writer lock of ``target`` for this process (re-entrant); returns the lock file.

    Args:
        target: the output directory or file (it need not exist; its parent is created).
        what: the option that named ``target`` (``--out``, ``output_dir``, ``trace_path``), for the message.

    Raises:
        ConfigError: another running process holds the lock; the message names it.
    """
    target = Path(target).expanduser()
    key = str(target.resolve())
    if key in _HELD:
        _HELD[key].count += 1
        return _HELD[key].file
    file = lock_file(target)
    file.parent.mkdir(parents=True, exist_ok=True)
    fd = _take(file, target, what)
    previous = _read(file)
    if previous and previous.get("pid") != os.getpid():
        log.warning("adapruner: taking over the stale lock %s of %s, which is no longer running", file,
                    _describe(previous))
    with contextlib.suppress(OSError):  # the flock is the lock; the record only names us (a full disk may refuse it)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me()).encode(), 0)
        os.fsync(fd)
    _HELD[key] = _Held(fd, file)
    return file


def release(target: str | Path) -> None:
    """Give back one hold of ``target``'s lock; the last one removes the lock file (nothing when not held)."""
    key = str(Path(target).expanduser().resolve())
    held = _HELD.get(key)
    if held is None:
        return
    held.count -= 1
    if held.count > 0:
        return
    del _HELD[key]
    with contextlib.suppress(FileNotFoundError):
        held.file.unlink()  # while still holding the flock: a waiting process then opens a new file
    os.close(held.fd)


@contextlib.contextmanager
def writer_lock(target: str | Path, *, what: str = "output path", enabled: bool = True) -> Iterator[None]:
    """Hold ``target``'s writer lock for the block (:func:`acquire` / :func:`release`); ``enabled=False``: no lock
    (the ranks of a job other than rank 0)."""
    if not enabled:
        yield
        return
    acquire(target, what=what)
    try:
        yield
    finally:
        release(target)
