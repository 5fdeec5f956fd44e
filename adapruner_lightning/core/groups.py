"""Coupled structures of a decoder LLM: per layer, attention units and MLP channels, with their parameter cost.

Attention is handled at GQA granularity from the architecture table (torch-pruning's automatic head grouping
fails on GQA models such as SmolLM2), MLP channels come from torch-pruning's ``DependencyGraph``: a channel is
a row of ``gate_proj`` and ``up_proj`` and the matching column of ``down_proj``, and :func:`check_mlp_coupling`
proves the traced graph agrees before anything is removed.

Two attention units exist:

* ``kv_group``: one key/value head, the query heads sharing it and the matching ``o_proj`` input columns;
* ``query_head``: one query head removed from *every* KV group at once (heads stay uniform within groups,
  so the GQA mapping holds and the KV cache is unchanged). Needs at least two query heads per group.

``head_dim`` never changes (RoPE and per-head norms depend on it).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from adapruner_lightning.core.architectures import ArchitectureSpec, get_architecture, head_layout
from adapruner_lightning.errors import AdaPrunerError, ConfigError

#: how attention is pruned: whole key/value groups, query heads uniformly within the groups, or chosen per model
AttentionUnit = Literal["auto", "kv_group", "query_head"]
ATTENTION_UNITS: tuple[str, ...] = get_args(AttentionUnit)


@dataclass
class FusedRows:
    """A block of consecutive output rows of a fused projection (Phi-3's ``qkv_proj``/``gate_up_proj``), with the
    parts of the ``nn.Linear`` interface the pruner reads (``weight``, ``bias``, ``in_features``, ``out_features``)."""

    module: nn.Linear
    start: int
    size: int

    @property
    def rows(self) -> slice:
        """The rows of ``module`` this block covers."""
        return slice(self.start, self.start + self.size)

    @property
    def weight(self) -> torch.Tensor:
        """View of the block's weight rows."""
        return self.module.weight[self.rows]

    @property
    def bias(self) -> torch.Tensor | None:
        """View of the block's bias entries (None without bias)."""
        return None if self.module.bias is None else self.module.bias[self.rows]

    @property
    def in_features(self) -> int:
        """Input width."""
        return self.module.in_features

    @property
    def out_features(self) -> int:
        """Rows in the block."""
        return self.size


def output_site(proj: "nn.Linear | FusedRows") -> tuple[nn.Linear, slice]:
    """The real module computing ``proj`` and the slice of its output (last dim) that belongs to ``proj``."""
    return (proj.module, proj.rows) if isinstance(proj, FusedRows) else (proj, slice(None))


@dataclass
class LayerStructure:
    """The prunable modules of one decoder layer and their current widths."""

    index: int
    attention: nn.Module
    q: "nn.Linear | FusedRows"
    k: "nn.Linear | FusedRows"
    v: "nn.Linear | FusedRows"
    o: nn.Linear
    gate: "nn.Linear | FusedRows"
    up: "nn.Linear | FusedRows"
    down: nn.Linear
    head_dim: int

    @property
    def fused(self) -> bool:
        """Whether q/k/v or gate/up are blocks of fused projections."""
        return isinstance(self.q, FusedRows) or isinstance(self.gate, FusedRows)

    @property
    def num_heads(self) -> int:
        """Current number of query heads."""
        return self.q.out_features // self.head_dim

    @property
    def num_kv_heads(self) -> int:
        """Current number of key/value heads."""
        return self.k.out_features // self.head_dim

    @property
    def queries_per_kv(self) -> int:
        """Query heads per key/value head (0 in a layer whose attention was removed)."""
        return self.num_heads // self.num_kv_heads if self.num_kv_heads else 0

    @property
    def intermediate(self) -> int:
        """Current MLP width."""
        return self.gate.out_features

    def attention_params(self) -> int:
        """Parameters in q/k/v/o (weights and biases; fused blocks count their own rows)."""
        return sum(_numel(m) for m in (self.q, self.k, self.v, self.o))

    def mlp_params(self) -> int:
        """Parameters in gate/up/down (weights and biases)."""
        return sum(_numel(m) for m in (self.gate, self.up, self.down))

    def head_cost(self) -> int:
        """Parameters one query head holds (its q rows and o columns)."""
        rows = self.head_dim * (self.q.in_features + (1 if self.q.bias is not None else 0))
        return rows + self.head_dim * self.o.out_features

    def kv_cost(self) -> int:
        """Parameters of one key/value head alone (k and v rows)."""
        return 2 * self.head_dim * (self.k.in_features + (1 if self.k.bias is not None else 0))

    def unit_cost(self, unit: str) -> int:
        """Parameters removed by one attention unit of kind ``unit``."""
        if unit == "kv_group":
            return self.queries_per_kv * self.head_cost() + self.kv_cost()
        return self.num_kv_heads * self.head_cost()

    def channel_cost(self) -> int:
        """Parameters one MLP channel holds."""
        bias = sum(1 for m in (self.gate, self.up) if m.bias is not None)
        return self.gate.in_features * 2 + bias + self.down.out_features


def _numel(module: nn.Linear) -> int:
    return module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)


def layer_structures(model: nn.Module, spec: ArchitectureSpec | None = None) -> list[LayerStructure]:
    """Return the :class:`LayerStructure` of every decoder layer of ``model``."""
    spec = spec or get_architecture(model)
    head_dim = head_layout(model.config).head_dim
    out = []
    for index, layer in enumerate(spec.decoder_layers(model)):
        attn, mlp = getattr(layer, spec.attention), getattr(layer, spec.mlp)
        out.append(LayerStructure(index=index, attention=attn, head_dim=head_dim, o=getattr(attn, spec.o),
                                  down=getattr(mlp, spec.down), **_qkv(spec, attn, head_dim), **_gate_up(spec, mlp)))
    return out


def _qkv(spec: ArchitectureSpec, attn: nn.Module, head_dim: int) -> dict:
    if spec.fused_qkv is None:
        return {"q": getattr(attn, spec.q), "k": getattr(attn, spec.k), "v": getattr(attn, spec.v)}
    fused = getattr(attn, spec.fused_qkv)
    kv_rows = int(attn.num_key_value_heads) * head_dim  # kept current by the pruner
    q_rows = fused.out_features - 2 * kv_rows
    return {"q": FusedRows(fused, 0, q_rows), "k": FusedRows(fused, q_rows, kv_rows),
            "v": FusedRows(fused, q_rows + kv_rows, kv_rows)}


def _gate_up(spec: ArchitectureSpec, mlp: nn.Module) -> dict:
    if spec.fused_gate_up is None:
        return {"gate": getattr(mlp, spec.gate), "up": getattr(mlp, spec.up)}
    fused = getattr(mlp, spec.fused_gate_up)
    half = fused.out_features // 2
    return {"gate": FusedRows(fused, 0, half), "up": FusedRows(fused, half, half)}


def resolve_attention_unit(unit: str, model_config) -> str:
    """Turn ``"auto"`` into a concrete unit and check that the model allows the one asked for."""
    if unit not in ATTENTION_UNITS:
        raise ConfigError("attention_unit", unit, f"one of {list(ATTENTION_UNITS)}")
    layout = head_layout(model_config)
    if unit == "auto":
        return "kv_group" if layout.num_kv_heads > 1 else "query_head"
    if unit == "query_head" and layout.queries_per_kv < 2:
        raise ConfigError("attention_unit", unit, "'kv_group' for a model with one query head per KV head",
                          hint="use attention_unit='kv_group' (or 'auto')")
    if unit == "kv_group" and layout.num_kv_heads < 2:
        raise ConfigError("attention_unit", unit, "'query_head' for a model with a single KV head",
                          hint="use attention_unit='query_head' (or 'auto')")
    return unit


def total_params(model: nn.Module) -> int:
    """Parameters of ``model``, tied weights counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def prunable_params(layers: list[LayerStructure]) -> int:
    """Parameters of the attention and MLP projections of all decoder layers."""
    return sum(layer.attention_params() + layer.mlp_params() for layer in layers)


def build_dependency_graph(model: nn.Module, vocab_probe: int = 8):
    """Trace ``model`` with torch-pruning (``use_cache=False``), embeddings and ``lm_head`` ignored."""
    import torch_pruning as tp

    device = next(model.parameters()).device
    example = {"input_ids": torch.zeros(1, vocab_probe, dtype=torch.long, device=device), "use_cache": False}
    ignored = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    modes = {m: m.training for m in model.modules()}  # torch-pruning switches the model to eval and leaves it
    try:
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            return tp.DependencyGraph().build_dependency(model, example_inputs=example, ignored_layers=ignored)
    except Exception as exc:  # noqa: BLE001 - any tracing failure is reported the same way
        raise AdaPrunerError(
            f"torch-pruning could not trace {type(model).__name__}: {exc}. Fix: make sure the model runs a plain "
            "forward(input_ids=..., use_cache=False) on its device, or register an ArchitectureSpec for it."
        ) from exc
    finally:
        for module, training in modes.items():
            module.training = training


def mlp_group(graph, layer: LayerStructure, idxs: list[int]):
    """torch-pruning's group removing MLP channels ``idxs`` of ``layer`` (gate/up rows, down columns)."""
    import torch_pruning as tp

    return graph.get_pruning_group(layer.gate, tp.prune_linear_out_channels, idxs=idxs)


def check_mlp_coupling(graph, layer: LayerStructure) -> None:
    """Raise unless torch-pruning couples exactly gate rows, up rows and down columns of ``layer``."""
    import torch_pruning as tp

    found = {(dep.target.module, dep.handler.__name__) for dep, _ in mlp_group(graph, layer, [0])
             if isinstance(dep.target.module, nn.Linear)}
    expected = {(layer.gate, tp.prune_linear_out_channels.__name__), (layer.up, tp.prune_linear_out_channels.__name__),
                (layer.down, tp.prune_linear_in_channels.__name__)}
    if found != expected:
        raise AdaPrunerError(
            f"layer {layer.index}: the traced MLP coupling is not gate/up rows + down columns "
            f"({len(found)} linear members found). The model's MLP is not a standard gated MLP; register an "
            "ArchitectureSpec whose gate/up/down names match it."
        )
