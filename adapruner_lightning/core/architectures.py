"""Registry of supported model families: where the layers, attention and MLP live, and their head layout.

The tables are data, apart from any logic. A family is found from ``config.model_type``. To support a new
family, describe it with :class:`ArchitectureSpec` and call :func:`register_architecture`; how it is written
to GGUF for llama.cpp is part of the description (:class:`GGUFArch`, read by ``outputs/gguf.py``)::

    register_architecture(ArchitectureSpec(name="my_llama_clone", model_types=("my_llama",),
                                           gguf=GGUFArch("llama")))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from adapruner_lightning.errors import ConfigError


@dataclass(frozen=True)
class GGUFArch:
    """How a family is written to GGUF for llama.cpp (the writer is :mod:`adapruner_lightning.outputs.gguf`).

    Args:
        arch: llama.cpp's own architecture for the family, written for uniform plans (``llama``, ``qwen2``,
            ``qwen3``); None: no GGUF export of this family.
        permute_qk: llama.cpp's graph rotates adjacent pairs (``NORM`` rope) where Hugging Face rotates halves, so
            q/k rows are permuted per head (``llama`` and the per-layer ``deci``; not ``qwen2``/``qwen3``).
        out_bias: ``arch``'s loader reads ``o_proj``/``down_proj`` biases (FLAP bias compensation); otherwise a
            compensated plan goes to ``deci``.
        full_width_q: ``arch`` sizes q and o by the hidden size (query heads x head_dim must equal it; otherwise
            the plan goes to ``deci``).
        deci_lacks: what llama.cpp's per-layer ``deci`` architecture cannot express of this family (its non-uniform
            plans are then refused, naming it); None: ``deci`` runs the family's non-uniform plans.
    """

    arch: str | None = None
    permute_qk: bool = True
    out_bias: bool = True
    full_width_q: bool = False
    deci_lacks: str | None = None


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
        gguf: how llama.cpp runs the family (:class:`GGUFArch`; the default: no GGUF export).
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
    gguf: GGUFArch = GGUFArch()
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


def registered_specs() -> list[ArchitectureSpec]:
    """Every registered family's spec, once each, by name."""
    return sorted({spec.name: spec for spec in _REGISTRY.values()}.values(), key=lambda spec: spec.name)


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
    ArchitectureSpec("llama", ("llama",), gguf=GGUFArch("llama")),
    ArchitectureSpec("mistral", ("mistral",), gguf=GGUFArch("llama")),
    ArchitectureSpec("qwen2", ("qwen2",), gguf=GGUFArch("qwen2", permute_qk=False, out_bias=False, full_width_q=True),
                     notes="q/k/v carry biases; they are pruned with their rows"),
    ArchitectureSpec("qwen3", ("qwen3",), gguf=GGUFArch("qwen3", permute_qk=False, out_bias=False,
                                                        deci_lacks="its per-head q_norm/k_norm"),
                     notes="q_norm/k_norm act per head on head_dim, which never changes"),
    ArchitectureSpec("gemma", ("gemma",), gguf=GGUFArch(deci_lacks="Gemma's scaled embeddings and (1 + w) norms")),
    ArchitectureSpec("gemma2", ("gemma2",), gguf=GGUFArch(
        deci_lacks="Gemma-2's extra post-attention/post-MLP norms and logit soft-capping")),
    ArchitectureSpec("gemma3", ("gemma3_text",), gguf=GGUFArch(
        deci_lacks="Gemma-3's extra norms, q/k norms and sliding-window layers"),
                     notes="single-KV-head variants can only lose query heads"),
    ArchitectureSpec("phi3", ("phi3",), fused_qkv="qkv_proj", fused_gate_up="gate_up_proj", per_layer_heads=False,
                     gguf=GGUFArch(deci_lacks="Phi-3's fused qkv_proj/gate_up_proj"),
                     notes="fused qkv_proj/gate_up_proj; its attention reads the shared config's head count, so "
                           "every layer is pruned alike (per_layer='uniform')"),
):
    register_architecture(_spec)
