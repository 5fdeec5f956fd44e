"""Statistics passes over calibration samples, streamed one batch at a time (memory does not grow with N).

* :func:`collect_activation_stats`: one hooked forward+backward pass over the whole pool that records, per
  sample and per channel, ``sum_t y*dL/dy`` for q/k/v/gate/up rows and o/down columns (vector-wise Taylor)
  and ``sum_t x``, ``sum_t x^2`` of the inputs of o_proj and down_proj (Wanda-sp, FLAP). Weights never
  receive gradients in this pass (only activations do), which saves the weight-gradient matmuls and memory.
  Any subset of samples then recombines exactly by summing rows: :meth:`StatsCache.reduce`.
* :func:`collect_gradient_stats`: weight gradients (and the Fisher diagonal) over a few samples, for the
  element-wise Taylor metrics, which cannot recombine from per-sample caches.

Hooks are always removed and ``requires_grad`` flags restored, also on error. Statistics are float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from adapruner_lightning.core.groups import LayerStructure, output_site
from adapruner_lightning.core.importance import MEMBERS, ROW_MEMBERS
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.progress import progress_bar


@dataclass
class StatsCache:
    """Per-sample, per-channel statistics of a calibration pool.

    Attributes:
        layers: one dict per decoder layer, each value a float32 tensor ``[N, channels]``.
        tokens: ``[N]`` tokens seen per sample.
        sample_ids: stable ids of the pool's samples.
    """

    layers: list[dict[str, torch.Tensor]]
    tokens: torch.Tensor
    sample_ids: list[str] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        """N, the pool size."""
        return int(self.tokens.numel())

    def reduce(self, subset: torch.Tensor | list[int]) -> list[dict[str, torch.Tensor]]:
        """Sum every statistic over the samples in ``subset`` (indices into the pool)."""
        idx = torch.as_tensor(subset, dtype=torch.long)
        tokens = self.tokens[idx].sum()
        return [{**{k: v[idx].sum(0) for k, v in layer.items()}, "tokens": tokens} for layer in self.layers]

    def features(self) -> torch.Tensor:
        """One row per sample: its normalised vector-Taylor statistics, for embedding samples in few dims."""
        parts = [layer[f"tv:{m}"] for layer in self.layers for m in ("o", "down")]
        feats = torch.cat(parts, dim=1)
        return feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)


@contextlib.contextmanager
def _frozen_weights(model: nn.Module, trainable: list[torch.Tensor] = ()) -> Iterator[None]:
    """Freeze every parameter except ``trainable`` for the duration; restore flags and clear grads after."""
    flags = {p: p.requires_grad for p in model.parameters()}
    keep = {id(t) for t in trainable}
    try:
        for p in flags:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None


@contextlib.contextmanager
def _hooks(handles: list) -> Iterator[list]:
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()


def _check_samples(samples: torch.Tensor, what: str) -> None:
    if samples.ndim != 2 or samples.shape[0] == 0 or samples.shape[1] < 2:
        raise ConfigError(what, tuple(samples.shape), "a LongTensor [num_samples >= 1, seq_len >= 2]",
                          hint="provide calibration text long enough for at least one sample")


def _lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Sum over samples of each sample's mean next-token loss (so per-sample gradients stay independent)."""
    logits = model(input_ids=batch, use_cache=False).logits.float()
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
    return nll / (batch.shape[1] - 1)


def collect_activation_stats(
    model: nn.Module, layers: list[LayerStructure], pool: torch.Tensor, *, batch_size: int = 8,
    sample_ids: list[str] | None = None, progress: bool = True,
) -> StatsCache:
    """One hooked forward+backward pass over ``pool`` ([N, T] token ids) recording per-sample statistics."""
    _check_samples(pool, "calibration pool")
    device = next(model.parameters()).device
    n = pool.shape[0]
    store = [{} for _ in layers]
    current: dict[str, slice] = {}

    def put(layer_idx: int, key: str, value: torch.Tensor) -> None:
        buf = store[layer_idx].setdefault(key, torch.zeros(n, value.shape[-1], dtype=torch.float32))
        buf[current["rows"]] += value.float().cpu()

    def out_hook(layer_idx: int, member: str, rows: slice):
        def hook(module, args, output):  # rows: this member's block of a fused projection's output
            y = output.detach()[..., rows]
            output.register_hook(lambda g: put(layer_idx, f"tv:{member}", (y.float() * g[..., rows].float()).sum(1)))
        return hook

    def in_hook(layer_idx: int, member: str):
        def hook(module, args):
            x = args[0]
            xf = x.detach().float()
            put(layer_idx, f"sum:{member}", xf.sum(1))
            put(layer_idx, f"sq:{member}", xf.square().sum(1))
            if x.requires_grad:
                x.register_hook(lambda g: put(layer_idx, f"tv:{member}", (xf * g.float()).sum(1)))
        return hook

    handles = [model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_(True))]
    for i, layer in enumerate(layers):
        for m in ROW_MEMBERS:
            module, rows = output_site(getattr(layer, m))
            handles.append(module.register_forward_hook(out_hook(i, m, rows)))
        handles += [getattr(layer, m).register_forward_pre_hook(in_hook(i, m)) for m in ("o", "down")]
    was_training = model.training
    model.eval()
    try:
        with _hooks(handles), _frozen_weights(model), torch.enable_grad():
            for start in progress_bar(range(0, n, batch_size), "statistics pass", enabled=progress):
                batch = pool[start:start + batch_size].to(device)
                current["rows"] = slice(start, start + batch.shape[0])
                _lm_loss(model, batch).backward()
    finally:
        model.train(was_training)
    tokens = torch.full((n,), pool.shape[1], dtype=torch.float32)
    return StatsCache(layers=store, tokens=tokens, sample_ids=list(sample_ids or [str(i) for i in range(n)]))


def _gradient_targets(layers: list[LayerStructure]) -> list[tuple[int, str, torch.Tensor, slice]]:
    """(layer, member, parameter, rows): fused projections appear once per member, with that member's rows."""
    out = []
    for i, layer in enumerate(layers):
        for m in MEMBERS:
            module, rows = output_site(getattr(layer, m))
            out.append((i, m, module.weight, rows))
    return out


def collect_gradient_stats(
    model: nn.Module, layers: list[LayerStructure], samples: torch.Tensor, *, second_order: bool = False,
    batch_size: int = 8, progress: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Mean weight gradient ``g`` (and mean squared per-sample gradient ``h``) of each q/k/v/o/gate/up/down.

    With ``second_order`` every sample gets its own backward pass (the Fisher diagonal needs per-sample
    gradients); otherwise samples are batched. Returns per layer ``{"g:<member>": ..., "h:<member>": ...}``.
    """
    _check_samples(samples, "calibration samples")
    targets = _gradient_targets(layers)
    weights = list({id(w): w for _, _, w, _ in targets}.values())
    if any(not (w.is_floating_point()) for w in weights):
        raise ConfigError("model weights", "non-float (quantized)", "floating-point weights for gradient metrics",
                          hint="de-quantize the model or use a data-free or activation metric")
    device = weights[0].device
    k = samples.shape[0]
    step = 1 if second_order else batch_size
    g_sum = [torch.zeros_like(w[rows], dtype=torch.float32) for _, _, w, rows in targets]
    h_sum = [torch.zeros_like(w[rows], dtype=torch.float32) for _, _, w, rows in targets] if second_order else None
    was_training = model.training
    model.eval()
    try:
        with _frozen_weights(model, weights), torch.enable_grad():
            for start in progress_bar(range(0, k, step), "gradient pass", enabled=progress):
                _lm_loss(model, samples[start:start + step].to(device)).backward()
                for j, (_, _, w, rows) in enumerate(targets):
                    grad = w.grad[rows].float()
                    g_sum[j] += grad
                    if h_sum is not None:
                        h_sum[j] += grad.square()
                for w in weights:
                    w.grad = None
    finally:
        model.train(was_training)
    out: list[dict[str, torch.Tensor]] = [{} for _ in layers]
    for j, (i, member, _, _) in enumerate(targets):
        out[i][f"g:{member}"] = g_sum[j] / k
        if h_sum is not None:
            out[i][f"h:{member}"] = h_sum[j] / k
    return out
