"""Statistics passes over calibration samples, streamed one batch at a time (memory does not grow with N).

* :func:`collect_activation_stats`: one hooked forward+backward pass over the whole pool that records, per
  sample and per channel, ``sum_t y*dL/dy`` for q/k/v/gate/up rows and o/down columns (vector-wise Taylor)
  and ``sum_t x``, ``sum_t x^2`` of the inputs of o_proj and down_proj (Wanda-sp, FLAP). Weights never
  receive gradients in this pass (only activations do), which saves the weight-gradient matmuls and memory.
  Any subset of samples then recombines exactly by summing rows: :meth:`StatsCache.reduce`.
* :func:`collect_gradient_scores`: the member scores of the element-wise Taylor metrics over a few samples
  (they need the subset's summed weight gradient before the absolute value, so they cannot recombine from
  per-sample caches). Each gradient is reduced to per-row / per-column scores as it arrives and freed at once;
  when the subset spans several backward passes, float32 gradient sums are kept only for as many weights as
  ``buffer_bytes`` allows, and the passes are repeated for the next group of weights (exact; more passes, never
  weight-sized memory).

Memory: nothing weight-sized is ever allocated; the loss runs the output head in slices
(:mod:`adapruner_lightning.evaluation.logits`); per-sample rows stay on the device until their batch is done
(one transfer per batch). The model's dtype is never changed: statistics are accumulated in float32.
Hooks are always removed, ``requires_grad`` flags restored and gradients dropped, also on error.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import nn

from adapruner_lightning.core.groups import LayerStructure, output_site
from adapruner_lightning.core.importance import MEMBERS, ROW_MEMBERS, MetricSpec, member_scores
from adapruner_lightning.distributed import LOCAL, Collective
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.evaluation.logits import backward_summed_nll
from adapruner_lightning.progress import progress_bar

T = TypeVar("T")


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


def _backward_loss(model: nn.Module, batch: torch.Tensor) -> None:
    """Backpropagate the sum over samples of each sample's mean next-token loss (per-sample gradients stay
    independent), with the output head in slices."""
    backward_summed_nll(model, batch, scale=1.0 / (batch.shape[1] - 1))


class _BatchRows:
    """Per-sample float32 rows of the current batch, on the model's device; flushed to the host store once per
    batch (one transfer, no sync per hook)."""

    def __init__(self, store: list[dict[str, torch.Tensor]], n: int) -> None:
        self.store, self.n, self.rows = store, n, slice(0, 0)
        self.pending: list[dict[str, torch.Tensor]] = [{} for _ in store]

    def start(self, rows: slice) -> None:
        """The pool rows the next batch covers."""
        self.rows = rows

    def put(self, layer_idx: int, key: str, value: torch.Tensor) -> None:
        buf = self.pending[layer_idx].get(key)
        if buf is None:
            self.pending[layer_idx][key] = value.float()
        else:
            buf += value

    def flush(self) -> None:
        for store, pending in zip(self.store, self.pending):
            for key, value in pending.items():
                host = store.setdefault(key, torch.zeros(self.n, value.shape[-1], dtype=torch.float32))
                host[self.rows] = value.cpu()
            pending.clear()


def _activation_hooks(model: nn.Module, layers: list[LayerStructure], rows: _BatchRows) -> list:
    """Forward hooks recording ``sum_t y*dL/dy`` (outputs of q/k/v/gate/up), ``sum_t x``, ``sum_t x^2`` and
    ``sum_t x*dL/dx`` (inputs of o/down); each keeps only the detached tensor it multiplies in the backward."""

    def out_hook(layer_idx: int, member: str, cols: slice):
        def hook(module, args, output):  # cols: this member's block of a fused projection's output
            y = output.detach()[..., cols]
            output.register_hook(lambda g: rows.put(layer_idx, f"tv:{member}", _dot_over_tokens(y, g[..., cols])))
        return hook

    def in_hook(layer_idx: int, member: str):
        def hook(module, args):
            x = args[0].detach()
            rows.put(layer_idx, f"sum:{member}", x.sum(1, dtype=torch.float32))
            rows.put(layer_idx, f"sq:{member}", _dot_over_tokens(x, x))
            if args[0].requires_grad:
                args[0].register_hook(lambda g: rows.put(layer_idx, f"tv:{member}", _dot_over_tokens(x, g)))
        return hook

    handles = [model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_(True))]
    for i, layer in enumerate(layers):
        for m in ROW_MEMBERS:
            module, cols = output_site(getattr(layer, m))
            handles.append(module.register_forward_hook(out_hook(i, m, cols)))
        handles += [getattr(layer, m).register_forward_pre_hook(in_hook(i, m)) for m in ("o", "down")]
    return handles


def _dot_over_tokens(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_t a[:, t, c] * b[:, t, c]`` in float32 -> ``[batch, channels]``, one sample at a time (the float32
    product is never larger than one sample's tensor)."""
    return torch.stack([(ai.float() * bi.float()).sum(0) for ai, bi in zip(a, b)])


def collect_activation_stats(
    model: nn.Module, layers: list[LayerStructure], pool: torch.Tensor, *, batch_size: int = 8,
    sample_ids: list[str] | None = None, progress: bool = True, collective: Collective = LOCAL,
) -> StatsCache:
    """One hooked forward+backward pass over ``pool`` ([N, T] token ids) recording per-sample statistics.

    With a ``collective`` of several ranks, rank ``r`` runs batches ``r, r + world_size, ...`` (each sample in the
    same batch as in one process) and the rows are summed over the ranks: every rank ends with the same,
    complete statistics, each having done ``1 / world_size`` of the pass. A failure on any rank is raised on
    every rank."""
    _check_samples(pool, "calibration pool")
    n = pool.shape[0]
    starts = list(range(0, n, batch_size))[collective.rank::collective.world_size]
    run = functools.partial(_activation_pass, model, layers, pool, starts, batch_size, progress and collective.is_zero)
    store = collective.together(run)
    if collective.world_size > 1:
        widths = collective.all_gather([{k: v.shape[1] for k, v in layer.items()} for layer in store])
        _sum_over_ranks(store, n, next(w for w in widths if any(w)), collective)
    tokens = torch.full((n,), pool.shape[1], dtype=torch.float32)
    return StatsCache(layers=store, tokens=tokens, sample_ids=list(sample_ids or [str(i) for i in range(n)]))


def _activation_pass(model: nn.Module, layers: list[LayerStructure], pool: torch.Tensor, starts: list[int],
                     batch_size: int, progress: bool) -> list[dict[str, torch.Tensor]]:
    """The hooked passes over the batches starting at ``starts``: per layer, ``[N, channels]`` rows (zero for
    the samples of other batches)."""
    device = next(model.parameters()).device
    store: list[dict[str, torch.Tensor]] = [{} for _ in layers]
    rows = _BatchRows(store, pool.shape[0])
    was_training = model.training
    model.eval()
    try:
        with _hooks(_activation_hooks(model, layers, rows)), _frozen_weights(model), torch.enable_grad():
            for start in progress_bar(starts, "statistics pass", enabled=progress):
                batch = pool[start:start + batch_size].to(device)
                rows.start(slice(start, start + batch.shape[0]))
                _backward_loss(model, batch)
                rows.flush()
    finally:
        model.train(was_training)
    return store


def _sum_over_ranks(store: list[dict[str, torch.Tensor]], n: int, widths: list[dict[str, int]],
                    collective: Collective) -> None:
    """Complete every rank's rows by summing the (disjoint, zero elsewhere) rows of all ranks; ``widths`` (from
    a rank that ran a batch) names every key, so a rank that had none joins each sum with zeros."""
    for layer, layer_widths in zip(store, widths):
        for key, width in sorted(layer_widths.items()):
            collective.sum_(layer.setdefault(key, torch.zeros(n, width, dtype=torch.float32)))


@dataclass
class _Target:
    """One scored member of one layer: its weight (shared by a fused projection's members) and its rows."""

    layer: int
    member: str
    weight: torch.Tensor
    rows: slice


def _gradient_targets(layers: list[LayerStructure]) -> list[_Target]:
    """Every q/k/v/o/gate/up/down; fused projections appear once per member, with that member's rows."""
    out = []
    for i, layer in enumerate(layers):
        for m in MEMBERS:
            module, rows = output_site(getattr(layer, m))
            out.append(_Target(i, m, module.weight, rows))
    return out


def budget_groups(items: list[T], sizes: list[int], budget: int) -> list[list[T]]:
    """Consecutive groups of ``items`` whose ``sizes`` (bytes) sum to at most ``budget`` (at least one item per
    group): weights whose gradient sums share one set of passes, layers whose Gram matrices share one pass."""
    groups: list[list[T]] = [[]]
    used = 0
    for item, size in zip(items, sizes):
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(item)
        used += size
    return groups


def default_buffer_bytes(weights: list[torch.Tensor]) -> int:
    """Float32 gradient sums allowed at once: a quarter of the scored weights' bytes, at least 512 MiB (small
    models then need no repeated passes)."""
    return max(sum(w.numel() * w.element_size() for w in weights) // 4, 512 * 2**20)


class _GradientScorer:
    """Turns each arriving gradient into member scores; with several passes, sums it in float32 first."""

    def __init__(self, targets: list[_Target], specs: list[MetricSpec], samples: int, passes: int,
                 second_order: bool, out: list[dict[str, dict[str, torch.Tensor]]]) -> None:
        self.specs, self.samples, self.passes, self.second_order, self.out = specs, samples, passes, second_order, out
        self.by_weight: dict[int, list[_Target]] = {}
        for target in targets:
            self.by_weight.setdefault(id(target.weight), []).append(target)
        self.sums: dict[int, list[torch.Tensor | None]] = {}
        self.seen: dict[int, int] = {}

    def hook(self, weight: torch.Tensor) -> None:
        """``register_post_accumulate_grad_hook`` callback: consume ``weight.grad`` and free it."""
        grad, weight.grad = weight.grad, None
        count = self.seen[id(weight)] = self.seen.get(id(weight), 0) + 1
        for target in self.by_weight[id(weight)]:
            g = grad[target.rows]
            if self.passes == 1:
                self._finish(target, g, g.float().square() if self.second_order else None)
                continue
            sums = self.sums.setdefault(id(target), [None, None])
            sums[0] = g.float() if sums[0] is None else sums[0].add_(g)
            if self.second_order:
                sums[1] = g.float().square() if sums[1] is None else sums[1].add_(g.float().square())
            if count == self.passes:
                self._finish(target, sums[0], sums[1])
                del self.sums[id(target)]

    def _finish(self, target: _Target, g_sum: torch.Tensor, h_sum: torch.Tensor | None) -> None:
        w = target.weight.detach()[target.rows]
        for spec in self.specs:
            self.out[target.layer][spec.name][target.member] = member_scores(
                spec, target.member, w, g_sum, h_sum, self.samples)


def collect_gradient_scores(
    model: nn.Module, layers: list[LayerStructure], samples: torch.Tensor, specs: list[MetricSpec], *,
    batch_size: int = 8, buffer_bytes: int | None = None, progress: bool = False,
) -> list[dict[str, dict[str, torch.Tensor]]]:
    """Member scores of the element-wise gradient metrics ``specs`` over ``samples`` ([k, T] token ids).

    The salience of each metric needs the mean gradient ``g`` over the samples (and, for second-order metrics,
    the mean squared per-sample gradient ``h``, one backward per sample) before its absolute value. When all
    samples go through one backward, each weight's gradient is reduced to scores the moment it is accumulated
    and freed. Otherwise float32 sums are kept for a group of weights at a time, at most ``buffer_bytes``
    (default: a quarter of the scored weights' bytes), and the passes run once per group.

    Returns:
        per layer ``{metric name: {member: scores}}`` (float32 vectors, one score per row or column).
    """
    _check_samples(samples, "calibration samples")
    second_order = any(spec.second_order for spec in specs)
    targets = _gradient_targets(layers)
    weights = list({id(t.weight): t.weight for t in targets}.values())
    if any(not w.is_floating_point() for w in weights):
        raise ConfigError("model weights", "non-float (quantized)", "floating-point weights for gradient metrics",
                          hint="de-quantize the model or use a data-free or activation metric")
    device = weights[0].device
    step = 1 if second_order else batch_size
    batches = [samples[s:s + step] for s in range(0, samples.shape[0], step)]
    sizes = [w.numel() * 4 * (2 if second_order else 1) for w in weights]
    budget = buffer_bytes if buffer_bytes is not None else default_buffer_bytes(weights)
    groups = [weights] if len(batches) == 1 else budget_groups(weights, sizes, budget)
    out: list[dict[str, dict[str, torch.Tensor]]] = [{spec.name: {} for spec in specs} for _ in layers]
    scorer = _GradientScorer(targets, specs, samples.shape[0], len(batches), second_order, out)
    was_training = model.training
    model.eval()
    try:
        passes = [(group, batch) for group in groups for batch in batches]
        current: list[torch.Tensor] | None = None
        handles: list = []
        with _hooks(handles), torch.enable_grad():
            for group, batch in progress_bar(passes, "gradient pass", enabled=progress):
                if group is not current:
                    current = group
                    for handle in handles:
                        handle.remove()
                    handles[:] = [w.register_post_accumulate_grad_hook(scorer.hook) for w in group]
                with _frozen_weights(model, group):
                    _backward_loss(model, batch.to(device))
    finally:
        model.train(was_training)
    return out
