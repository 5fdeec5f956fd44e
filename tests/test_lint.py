"""``ruff check`` is clean on the whole repository, with the rules of ``[tool.ruff]`` in ``pyproject.toml``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", str(ROOT)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_ruff_check_fails_on_a_planted_defect(tmp_path):
    """The check can fail: an unused import in a file under the same configuration is reported."""
    planted = tmp_path / "planted.py"
    planted.write_text("import os\n")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--config", str(ROOT / "pyproject.toml"),
                             str(planted)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1 and "F401" in result.stdout
