"""adapruner-lightning: sample-aware adaptive structured pruning (AdaPruner) for LLMs in PyTorch Lightning."""

from adapruner_lightning.errors import AdaPrunerError, ConfigError, SearchFailed

__all__ = ["AdaPrunerError", "ConfigError", "SearchFailed"]
__version__ = "0.1.0"
