"""Reversible masks: make a model behave as if a selection were removed, without copying or reshaping it.

Heads are independent in attention and MLP channels in the MLP, so zeroing the *input columns* of
``o_proj`` (for removed heads) and ``down_proj`` (for removed channels) gives exactly the logits of the
physically pruned model. Only those columns are saved, so a mask costs a few MB and restores bit-exactly.
A candidate's compensation is scored with it: FLAP's biases are added to the layers (and restored), and a
least-squares reconstruction (:class:`~adapruner_lightning.core.reconstruction.Fits`) replaces the removed inputs
of its projections by their prediction in forward pre-hooks instead of zeroing their columns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from adapruner_lightning.core.groups import LayerStructure
from adapruner_lightning.core.reconstruction import Fits, substituted
from adapruner_lightning.core.selection import LayerSelection

def _column_index(heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads]) if heads else torch.empty(0, dtype=torch.long)


@contextlib.contextmanager
def masked(layers: list[LayerStructure], selection: dict[int, LayerSelection],
           compensation: dict[int, dict[str, list[float]]] | Fits | None = None) -> Iterator[None]:
    """Within the block, the model computes as if ``selection`` were physically removed, with its
    ``compensation``: the biases of :func:`~adapruner_lightning.core.physical.compensation_biases` added, or the
    least-squares :class:`~adapruner_lightning.core.reconstruction.Fits` of the kept columns applied."""
    fits = compensation.fits if isinstance(compensation, Fits) else {}
    biases = compensation if isinstance(compensation, dict) else {}
    saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    old_biases: list[tuple[torch.nn.Linear, torch.Tensor | None]] = []
    try:
        with torch.no_grad():
            _zero_columns(layers, selection, saved, fits)
            _add_biases(layers, biases, old_biases)
        with substituted(layers, fits):
            yield
    finally:
        with torch.no_grad():
            for weight, cols, values in reversed(saved):
                weight[:, cols] = values
            for module, old in reversed(old_biases):
                if old is None:
                    module.bias = None
                else:
                    module.bias.copy_(old)


def add_bias(module: torch.nn.Linear, values: list[float], *, trainable: bool) -> None:
    """Add ``values`` to ``module``'s bias, creating the bias parameter when the layer has none."""
    add = torch.as_tensor(values, dtype=module.weight.dtype, device=module.weight.device)
    if module.bias is None:
        module.bias = torch.nn.Parameter(add, requires_grad=trainable)
    else:
        module.bias.add_(add)


def _add_biases(layers, biases, old_biases) -> None:
    for i, parts in biases.items():
        for module, values in ((layers[i].o, parts.get("o")), (layers[i].down, parts.get("down"))):
            if values is not None:
                old_biases.append((module, None if module.bias is None else module.bias.detach().clone()))
                add_bias(module, values, trainable=False)


def _zero_columns(layers, selection, saved, fits) -> None:
    """Zero the removed input columns of o/down, except those of projections whose inputs a fit substitutes."""
    for i, sel in selection.items():
        layer = layers[i]
        for member, cols in (("o", _column_index(sel.heads, layer.head_dim)),
                             ("down", torch.as_tensor(sel.channels, dtype=torch.long))):
            weight = getattr(layer, member).weight
            if cols.numel() and member not in fits.get(i, {}):
                cols = cols.to(weight.device)
                saved.append((weight, cols, weight[:, cols].clone()))
                weight[:, cols] = 0
