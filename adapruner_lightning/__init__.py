"""adapruner-lightning: sample-aware adaptive structured pruning (AdaPruner) for LLMs in PyTorch Lightning.

Public API only: every name in ``__all__`` is importable from here and resolves to the object the README
documents, whatever was imported before. Names are imported on first use (``import adapruner_lightning``
stays fast) and cached in the module's namespace. The package is layered (see CONTRIBUTING.md): ``errors``,
``progress``, ``config`` < ``data`` < ``evaluation`` < ``core`` < ``search`` < ``api`` < ``lightning`` < ``cli``.
"""

from __future__ import annotations

import importlib
from typing import Any

from adapruner_lightning.errors import AdaPrunerError, ConfigError, SearchFailed

__version__ = "0.1.0"

#: public name -> module defining it. No public name is also the name of a sub-module or sub-package, so an
#: ``import adapruner_lightning.<sub>`` never replaces a public name (tests/test_public_api.py checks both).
_LAZY: dict[str, str] = {
    "AdaPrunerCallback": "adapruner_lightning.lightning.callback",
    "PruningConfig": "adapruner_lightning.core.config",
    "SearchConfig": "adapruner_lightning.search.config",
    "RecoveryConfig": "adapruner_lightning.lightning.recovery",
    "DistillationConfig": "adapruner_lightning.lightning.distillation",
    "EvalConfig": "adapruner_lightning.evaluation.config",
    "recovery_loss": "adapruner_lightning.lightning.distillation",
    "PruningPlan": "adapruner_lightning.core.plan",
    "prune": "adapruner_lightning.api",
    "PruningSession": "adapruner_lightning.core.session",
    "run_search": "adapruner_lightning.search.runner",
    "find_plan": "adapruner_lightning.search.pipeline",
    "save_pruned": "adapruner_lightning.outputs.export",
    "load_pruned": "adapruner_lightning.outputs.export",
    "export_gguf": "adapruner_lightning.outputs.gguf",
    "export_gguf_dir": "adapruner_lightning.outputs.gguf",
    "CausalLMModule": "adapruner_lightning.lightning.module",
    "TextDataModule": "adapruner_lightning.lightning.datamodule",
    "load_model": "adapruner_lightning.data.models",
    "evaluate_model": "adapruner_lightning.evaluation.evaluate",
    "register_architecture": "adapruner_lightning.core.architectures",
    "register_metric": "adapruner_lightning.core.importance",
    "register_gradient_metric": "adapruner_lightning.core.importance",
}

__all__ = ["AdaPrunerError", "ConfigError", "SearchFailed", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import a public name on first use and cache it, so later lookups never reach this function."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'adapruner_lightning' has no attribute {name!r}")


def __dir__() -> list[str]:
    """Public names and the package's own attributes."""
    return sorted({*globals(), *__all__})
