"""The documentation site: it builds strictly (no broken link, anchor or missing page) and its API reference
lists every public name, each with a docstring. Both checks are shown to fail on a planted defect."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import adapruner_lightning

ROOT = Path(__file__).resolve().parents[1]


def reference_targets(docs: Path) -> set[str]:
    """The dotted paths the API reference renders (``::: pkg.module.Name`` lines)."""
    found = set()
    for page in (docs / "reference").glob("*.md"):
        found |= set(re.findall(r"^:::\s*(\S+)", page.read_text(), flags=re.M))
    return found


def undocumented_public_names(docs: Path) -> list[str]:
    """Public names (``__all__``) missing from the API reference or without a docstring of their own."""
    targets = reference_targets(docs)
    missing = []
    for name in adapruner_lightning.__all__:
        obj = getattr(adapruner_lightning, name)
        module = importlib.import_module(obj.__module__)
        if f"{module.__name__}.{name}" not in targets or not (obj.__doc__ or "").strip():
            missing.append(name)
    return missing


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of the site configured at ``root`` (never with ``-q``: mkdocs 1.6 then stops
    counting warnings and a strict build with a broken link exits 0)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"),
                           "-d", str(site)], cwd=root, capture_output=True, text=True, env=env, timeout=600)


def test_every_public_name_is_in_the_api_reference_with_a_docstring(tmp_path: Path) -> None:
    assert undocumented_public_names(ROOT / "docs") == []
    planted = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", planted)
    page = planted / "reference" / "outputs.md"
    page.write_text(page.read_text().replace("::: adapruner_lightning.outputs.export.load_pruned", ""))
    assert undocumented_public_names(planted) == ["load_pruned"]


@pytest.fixture(scope="module")
def mkdocs_available() -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")


def test_the_site_builds_strictly_and_a_broken_link_fails_it(tmp_path: Path, mkdocs_available: None) -> None:
    result = build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "lightning" / "index.html").is_file()
    scratch = tmp_path / "scratch"
    shutil.copytree(ROOT / "docs", scratch / "docs")
    shutil.copy(ROOT / "mkdocs.yml", scratch / "mkdocs.yml")
    (scratch / "docs" / "index.md").write_text((scratch / "docs" / "index.md").read_text() + "\n[gone](no-such-page.md)\n")
    broken = build(scratch, tmp_path / "site2")
    assert broken.returncode != 0 and "no-such-page.md" in broken.stderr
