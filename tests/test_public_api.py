"""Every public name resolves to what the README documents, whatever was imported before (fresh interpreters)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import adapruner_lightning

#: name -> "module:attribute" the README documents for it.
DOCUMENTED = {
    "AdaPrunerCallback": "adapruner_lightning.lightning.callback:AdaPrunerCallback",
    "PruningConfig": "adapruner_lightning.core.config:PruningConfig",
    "SearchConfig": "adapruner_lightning.search.config:SearchConfig",
    "RecoveryConfig": "adapruner_lightning.lightning.recovery:RecoveryConfig",
    "DistillationConfig": "adapruner_lightning.lightning.distillation:DistillationConfig",
    "EvalConfig": "adapruner_lightning.evaluation.config:EvalConfig",
    "recovery_loss": "adapruner_lightning.lightning.distillation:recovery_loss",
    "PruningPlan": "adapruner_lightning.core.plan:PruningPlan",
    "prune": "adapruner_lightning.api:prune",
    "PruningSession": "adapruner_lightning.core.session:PruningSession",
    "run_search": "adapruner_lightning.search.runner:run_search",
    "find_plan": "adapruner_lightning.search.pipeline:find_plan",
    "save_pruned": "adapruner_lightning.outputs.export:save_pruned",
    "load_pruned": "adapruner_lightning.outputs.export:load_pruned",
    "export_gguf": "adapruner_lightning.outputs.gguf:export_gguf",
    "export_gguf_dir": "adapruner_lightning.outputs.gguf:export_gguf_dir",
    "CausalLMModule": "adapruner_lightning.lightning.module:CausalLMModule",
    "TextDataModule": "adapruner_lightning.lightning.datamodule:TextDataModule",
    "load_model": "adapruner_lightning.data.models:load_model",
    "evaluate_model": "adapruner_lightning.evaluation.evaluate:evaluate_model",
    "register_architecture": "adapruner_lightning.core.architectures:register_architecture",
    "register_metric": "adapruner_lightning.core.importance:register_metric",
    "register_gradient_metric": "adapruner_lightning.core.importance:register_gradient_metric",
    "AdaPrunerError": "adapruner_lightning.errors:AdaPrunerError",
    "ConfigError": "adapruner_lightning.errors:ConfigError",
    "SearchFailed": "adapruner_lightning.errors:SearchFailed",
}

_CHECK = """
import importlib, json, pkgutil, sys
order = json.loads(sys.argv[1])
documented = json.loads(sys.argv[2])
for step in order:
    if step == "@all-submodules":
        import adapruner_lightning
        for info in pkgutil.walk_packages(adapruner_lightning.__path__, "adapruner_lightning."):
            if not info.name.endswith("__main__"):  # running it would execute the CLI
                importlib.import_module(info.name)
    elif step.startswith("from "):
        exec(step)
    else:
        importlib.import_module(step)
import adapruner_lightning as pkg
bad = []
for _ in range(2):  # a second lookup must give the same object (no shadowing after first use)
    for name, where in documented.items():
        module, attr = where.split(":")
        expected = getattr(importlib.import_module(module), attr)
        got = getattr(pkg, name)
        ns = {}
        exec(f"from adapruner_lightning import {name} as value", ns)
        if got is not expected or ns["value"] is not expected:
            bad.append(f"{name}: {got!r}")
print(json.dumps(bad))
"""

ORDERS = {
    "package only": [],
    "every submodule first": ["@all-submodules"],
    "cli and core modules first": ["adapruner_lightning.cli.prune", "adapruner_lightning.core.physical",
                                   "adapruner_lightning.search.runner", "adapruner_lightning.lightning.callback"],
    "public names first, then submodules": ["from adapruner_lightning import prune, run_search", "@all-submodules"],
}


def test_all_is_what_the_readme_documents():
    assert sorted(adapruner_lightning.__all__) == sorted(DOCUMENTED)


def test_no_public_name_is_also_a_submodule_name():
    # only direct children become attributes of the package when imported (``cli.prune`` sets ``cli.prune``)
    children = {info.name for info in pkgutil.iter_modules(adapruner_lightning.__path__)}
    assert children and not set(adapruner_lightning.__all__) & children


@pytest.mark.parametrize("order", list(ORDERS), ids=list(ORDERS))
def test_every_public_name_resolves_in_a_fresh_interpreter(order):
    proc = subprocess.run([sys.executable, "-c", _CHECK, json.dumps(ORDERS[order]), json.dumps(DOCUMENTED)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_prune_is_the_function_on_every_call():
    assert callable(adapruner_lightning.prune) and callable(adapruner_lightning.prune)
    assert adapruner_lightning.prune.__module__ == "adapruner_lightning.api"
