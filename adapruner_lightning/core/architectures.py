"""Registry of supported model families: where the layers, attention and MLP live, and their head layout.

The tables are data, apart from any logic. A family is found from ``config.model_type``. To support a new
family, describe it with :class:`ArchitectureSpec` and call :func:`register_architecture`::

    register_architecture(ArchitectureSpec(name="my_llama_clone", model_types=("my_llama",)))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from adapruner_lightning.errors import ConfigError


@dataclass(frozen=True)
class ArchitectureSpec:
    """How one decoder family lays out its prunable structures.

    Args:
        name: registry name.
        model_types: the ``config.model_type`` values this spec handles.
        layers: dotted path from the causal LM to the list of decoder layers.
        attention: attribute of a decoder layer holding the attention block.
        q, k, v, o: attribute names of the attention projections.
        mlp: attribute of a decoder layer holding the gated MLP.
        gate, up, down: attribute names of the MLP projections.
        fused_qkv: attribute of a fused projection whose output rows are ``[q | k | v]`` (Phi-3's
            ``qkv_proj``), replacing q/k/v.
        fused_gate_up: attribute of a fused projection whose output rows are ``[gate | up]`` (Phi-3's
            ``gate_up_proj``), replacing gate/up.
        per_layer_heads: whether attention reads its head counts from per-module attributes (so layers can
            differ); families whose attention reads the shared config only allow uniform pruning.
        notes: anything a user should know (shown by ``supported_architectures()``).
    """

    name: str
    model_types: tuple[str, ...]
    layers: str = "model.layers"
    attention: str = "self_attn"
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"
    mlp: str = "mlp"
    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"
    fused_qkv: str | None = None
    fused_gate_up: str | None = None
    per_layer_heads: bool = True
    notes: str = ""

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """Return the decoder layers of ``model`` (a causal LM of this family)."""
        obj: Any = model
        for part in self.layers.split("."):
            obj = getattr(obj, part)
        return obj


_REGISTRY: dict[str, ArchitectureSpec] = {}


def register_architecture(spec: ArchitectureSpec, *, replace: bool = False) -> ArchitectureSpec:
    """Add ``spec`` to the registry; refuse a ``model_type`` already claimed unless ``replace``."""
    for model_type in spec.model_types:
        owner = _REGISTRY.get(model_type)
        if owner is not None and owner.name != spec.name and not replace:
            raise ConfigError("model_type", model_type, f"a type not yet registered (taken by {owner.name!r})",
                              hint="pass replace=True to override the built-in table")
    for model_type in spec.model_types:
        _REGISTRY[model_type] = spec
    return spec


def supported_architectures() -> list[str]:
    """The ``config.model_type`` values that can be pruned."""
    return sorted(_REGISTRY)


def get_architecture(model_or_config: Any) -> ArchitectureSpec:
    """Find the spec for a model or its config, or raise :class:`ConfigError` listing the supported ones."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in _REGISTRY:
        raise ConfigError(
            "architecture (config.model_type)", model_type, f"one of {supported_architectures()}",
            hint="describe the family with adapruner_lightning.core.architectures.ArchitectureSpec and call "
                 "register_architecture(spec) before pruning",
        )
    return _REGISTRY[model_type]


@dataclass(frozen=True)
class HeadLayout:
    """Attention geometry read from the config (never from module attributes, which recent transformers drop)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    num_layers: int

    @property
    def queries_per_kv(self) -> int:
        """Query heads sharing one key/value head."""
        return self.num_heads // self.num_kv_heads


def head_layout(config: Any) -> HeadLayout:
    """Read the attention/MLP geometry of a (possibly nested multimodal) HF config."""
    config = getattr(config, "text_config", None) or config
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return HeadLayout(
        num_heads=heads,
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        head_dim=int(head_dim),
        hidden_size=int(config.hidden_size),
        intermediate_size=int(config.intermediate_size),
        num_layers=int(config.num_hidden_layers),
    )


for _spec in (
    ArchitectureSpec("llama", ("llama",)),
    ArchitectureSpec("mistral", ("mistral",)),
    ArchitectureSpec("qwen2", ("qwen2",), notes="q/k/v carry biases; they are pruned with their rows"),
    ArchitectureSpec("qwen3", ("qwen3",), notes="q_norm/k_norm act per head on head_dim, which never changes"),
    ArchitectureSpec("gemma", ("gemma",)),
    ArchitectureSpec("gemma2", ("gemma2",)),
    ArchitectureSpec("gemma3", ("gemma3_text",), notes="single-KV-head variants can only lose query heads"),
    ArchitectureSpec("phi3", ("phi3",), fused_qkv="qkv_proj", fused_gate_up="gate_up_proj", per_layer_heads=False,
                     notes="fused qkv_proj/gate_up_proj; its attention reads the shared config's head count, so "
                           "every layer is pruned alike (per_layer='uniform')"),
):
    register_architecture(_spec)
