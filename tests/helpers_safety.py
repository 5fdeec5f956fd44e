"""Shared by the data-safety tests: a tree's content hash (every file, byte for byte) and one-line CLI runs."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path


def tree_digest(path: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``path`` (``path`` itself when it is a file); directories
    are listed too (value ``"dir"``), so a removed or added file or folder changes the result."""
    path = Path(path)
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    out = {}
    for item in sorted(path.rglob("*")):
        key = str(item.relative_to(path))
        out[key] = hashlib.sha256(item.read_bytes()).hexdigest() if item.is_file() else "dir"
    return out


def run_cli(*args: object, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """``python -m adapruner_lightning.cli ARGS`` in a real process (no --debug; progress bars, ours and Hugging
    Face's, off, so stderr holds only what went wrong)."""
    environ = {k: v for k, v in os.environ.items() if k != "ADAPRUNER_DEBUG"}
    environ.update(ADAPRUNER_PROGRESS="0", OMP_NUM_THREADS="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                   TRANSFORMERS_VERBOSITY="error", **env)
    return subprocess.run([sys.executable, "-m", "adapruner_lightning.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=environ)


def assert_one_line_error(result: subprocess.CompletedProcess, command: str, *fragments: str) -> str:
    """Exit status 2, no traceback, exactly one line on stderr starting ``adapruner COMMAND: error:`` and holding
    every fragment; returns the line."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"adapruner {command}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
