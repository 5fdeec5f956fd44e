"""The package's layering, checked statically: no module imports from a layer above its own, and no cycles.

Layers, bottom up (CONTRIBUTING.md): ``errors``/``progress``/``config`` < ``data`` < ``evaluation`` < ``core`` <
``search`` < ``outputs`` < ``api`` < ``lightning`` < ``cli``. Every import counts, function-level (lazy) ones included.
The checks run on a scratch copy with a forbidden import and a cycle planted, so they are shown to fail.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "adapruner_lightning"
NAME = "adapruner_lightning"
LAYERS = {"errors": 0, "progress": 0, "config": 0, "distributed": 0, "data": 1, "evaluation": 2, "core": 3, "search": 4, "outputs": 5,
          "api": 6, "lightning": 7, "cli": 8}


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name (without the package prefix) -> file; ``__init__`` files name their package."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports (``from pkg.a import b`` names module ``a.b`` when it is one)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == NAME:
            base = node.module[len(NAME) + 1:]
            for alias in node.names:
                child = f"{base}.{alias.name}" if base else alias.name
                found.add(child if child in modules else base)
        elif isinstance(node, ast.Import):
            found |= {a.name[len(NAME) + 1:] for a in node.names if a.name.startswith(f"{NAME}.")}
    return {m for m in found if m}


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports, for the package at ``root``."""
    modules = _modules(root)
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def layer(module: str) -> int | None:
    """The layer rank of a module (None for the package's own ``__init__``, the lazy public facade)."""
    return LAYERS[module.split(".")[0]] if module else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``"a -> b"`` for every import of a module from a higher layer."""
    bad = []
    for module, targets in graph.items():
        if layer(module) is None:
            continue
        bad += [f"{module} -> {t}" for t in sorted(targets) if layer(t) is not None and layer(t) > layer(module)]
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles (each as the list of modules around it), by depth-first search."""
    found: list[list[str]] = []
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, set())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        state[node] = "done"
        stack.pop()

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_every_module_belongs_to_a_layer():
    unknown = [m for m in import_graph(PACKAGE) if m and m.split(".")[0] not in LAYERS]
    assert not unknown, f"modules outside the layer table (add them to CONTRIBUTING.md and LAYERS): {unknown}"


def test_no_module_imports_from_a_layer_above():
    assert upward_imports(import_graph(PACKAGE)) == []


def test_no_import_cycles():
    assert cycles(import_graph(PACKAGE)) == []


def test_the_checks_fail_on_a_forbidden_import_and_a_cycle(tmp_path):
    scratch = tmp_path / NAME
    shutil.copytree(PACKAGE, scratch, ignore=shutil.ignore_patterns("__pycache__"))
    with (scratch / "core" / "groups.py").open("a") as fh:  # core must not know the search
        fh.write("\n\ndef _late():\n    from adapruner_lightning.search.runner import run_search\n    return run_search\n")
    with (scratch / "data" / "text.py").open("a") as fh:  # calibration imports text: a cycle
        fh.write("\nfrom adapruner_lightning.data import calibration  # noqa\n")
    graph = import_graph(scratch)
    assert upward_imports(graph) == ["core.groups -> search.runner"]
    assert any(set(cycle) == {"data.calibration", "data.text"} for cycle in cycles(graph))


def test_every_package_import_names_something_that_exists():
    """``from adapruner_lightning[.x] import y``: the module exists and y is one of its names or sub-modules (a
    lazy import of a moved name fails only when its line runs, so it is checked here, statically)."""
    modules = _modules(PACKAGE)
    missing = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                    and node.module.split(".")[0] == NAME):
                continue
            base = node.module[len(NAME) + 1:]
            if base not in modules:
                missing.append(f"{name}: {node.module}")
                continue
            target = ast.parse(modules[base].read_text())
            defined = {n.name for n in target.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            defined |= {t.id for n in target.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                        for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
            defined |= {a.asname or a.name for n in target.body if isinstance(n, (ast.Import, ast.ImportFrom))
                        for a in n.names}
            if not base:
                defined |= set(__import__(NAME).__all__)
            missing += [f"{name}: {node.module}.{a.name}" for a in node.names
                        if a.name not in defined and f"{base}.{a.name}".strip(".") not in modules]
    assert missing == []
