"""adapruner-lightning: sample-aware adaptive structured pruning (AdaPruner) for LLMs in PyTorch Lightning.

Public API only; everything else lives in its own module.
"""

from adapruner_lightning.errors import AdaPrunerError, ConfigError, SearchFailed

__version__ = "0.1.0"

_LAZY = {
    "AdaPrunerCallback": "adapruner_lightning.callback",
    "PruningConfig": "adapruner_lightning.config",
    "SearchConfig": "adapruner_lightning.config",
    "RecoveryConfig": "adapruner_lightning.recovery",
    "PruningPlan": "adapruner_lightning.plan",
    "prune": "adapruner_lightning.pruner",
    "PruningSession": "adapruner_lightning.pruner",
    "run_search": "adapruner_lightning.search",
    "save_pruned": "adapruner_lightning.export",
    "load_pruned": "adapruner_lightning.export",
    "CausalLMModule": "adapruner_lightning.lit",
    "TextDataModule": "adapruner_lightning.datamodule",
    "load_model": "adapruner_lightning.models",
    "evaluate_model": "adapruner_lightning.evaluation",
    "register_architecture": "adapruner_lightning.architectures",
    "register_metric": "adapruner_lightning.importance",
}

__all__ = ["AdaPrunerError", "ConfigError", "SearchFailed", *_LAZY]


def __getattr__(name: str):
    """Import public names lazily so ``import adapruner_lightning`` stays fast."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adapruner_lightning' has no attribute {name!r}")
