"""Reconstruction of the kept weights: what a candidate adds to make up for the input channels it removes.

Removing input channels ``R`` of a consuming projection (``o_proj``: a head's columns, ``down_proj``: an MLP
channel's column) leaves ``W[:, S] x_S`` where the dense layer computed ``W x``. Three ways to make up for it
(``PruningConfig.reconstruction``, searched by ``SearchSpaceConfig.reconstruction``):

* ``none``: nothing (the removed inputs count as zero);
* ``bias`` (FLAP): the removed inputs count as their calibration mean ``mu_R``: the bias ``W[:, R] mu_R``;
* ``lstsq``: the removed inputs count as their least-squares prediction from the kept ones,
  ``x_R ~ M x_S + c`` with ``M = C[R, S] (C[S, S] + lambda I)^-1`` and ``c = mu_R - M mu_S`` (``C`` the
  covariance of the layer's inputs on the calibration pool, ``lambda = damping x mean(diag C[S, S])``). The
  projection becomes ``W' = W[:, S] + W[:, R] M`` with the bias ``W[:, R] c``: the solution of
  ``min ||W x - W' x_S - b||^2 + lambda ||W' - W[:, S]||^2`` over the calibration tokens (ridge towards the
  original weights; SlimGPT / ZipLM's column update with an intercept). ``bias`` is its zeroth-order term.

Scored under masks exactly as exported: :func:`substituted` replaces the removed inputs by their prediction in
forward pre-hooks (no weight is touched, so nothing weight-sized is saved), and :meth:`LeastSquares.write` writes
``W'`` into the dense weights layer by layer right before the columns are removed (``core.physical.apply_plan``).

Statistics: the inputs' second moments ``sum_t x x^T`` of every layer over the *whole pool* and the
*reconstruction windows* (``search.data.reconstruction_windows`` more calibration windows, which no candidate's
sample subset reads: a Gram of 8k tokens under-determines a 14336-wide ``down_proj``; :func:`collect_grams`), in float32
on the host. They cannot be kept per sample (14336^2 floats per layer at
Llama-3.1-8B's shape), so every candidate's fit reads the same pool-wide Gram whatever its samples; the fit then
depends on the selection, the damping, the pool and the reconstruction windows only. The pass is forward-only and holds at most
``buffer_bytes`` of Gram matrices on the device at once (layers in groups, one pass per group, each pass stopped
after its group's last layer); 8B in bf16: 28 GB of host memory, 4 GB on the device.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from adapruner_lightning.core.groups import LayerStructure
from adapruner_lightning.core.selection import LayerSelection
from adapruner_lightning.core.stats import budget_groups, default_buffer_bytes
from adapruner_lightning.distributed import LOCAL, Collective
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.progress import progress_bar

log = logging.getLogger(__name__)

#: the choices of ``PruningConfig.reconstruction``, zeroth order first: nothing, FLAP's bias compensation,
#: least squares
Reconstruction = Literal["none", "bias", "lstsq"]
RECONSTRUCTIONS: tuple[str, ...] = get_args(Reconstruction)
#: ``lambda`` as a fraction of the mean diagonal of the kept inputs' covariance (chosen on development data:
#: ``benchmarks/results/reconstruction.md``)
DEFAULT_DAMPING = 0.01
#: the consuming projections whose kept input columns are re-fitted
MEMBERS = ("o", "down")
_RETRIES = 6  # a factorisation that fails is retried with 10x the damping, this many times


def removed_columns(layer: LayerStructure, sel: LayerSelection, member: str) -> list[int]:
    """The input columns of ``layer``'s ``member`` (``"o"`` or ``"down"``) that ``sel`` removes."""
    if member == "o":
        return [h * layer.head_dim + j for h in sel.heads for j in range(layer.head_dim)]
    return list(sel.channels)


@dataclass
class GramCache:
    """Per layer, float32 sums over the tokens of the pool (and the reconstruction windows) of the inputs of
    ``o_proj`` and ``down_proj``.

    Attributes:
        layers: one dict per decoder layer: ``"o"``/``"down"`` the ``[d, d]`` sums of ``x x^T``, ``"sum:o"``/
            ``"sum:down"`` the ``[d]`` sums of ``x`` (on the host).
        tokens: the tokens summed over (the same for every layer).
    """

    layers: list[dict[str, torch.Tensor]]
    tokens: int



class _StopForward(Exception):
    """Raised by the last hook of a layer group: the rest of the forward is not needed."""


@torch.no_grad()
def collect_grams(model: nn.Module, layers: list[LayerStructure], pool: torch.Tensor, *, batch_size: int = 8,
                  buffer_bytes: int | None = None, progress: bool = False, collective: Collective = LOCAL,
                  extra: torch.Tensor | None = None) -> GramCache:
    """Forward passes over ``pool`` ([N, T] token ids) summing ``x x^T`` and ``x`` of every o/down input; with
    ``extra`` ([K, T'] token ids, any length: more calibration windows) over those too, in the same sums.

    With a ``collective`` of several ranks, rank ``r`` runs the batches ``r, r + world_size, ...`` and the sums are
    added over the ranks (every rank ends with the complete statistics). The model is not changed; its dtype is
    kept (inputs are converted to float32 one batch at a time). ``buffer_bytes``: Gram matrices held on the device at
    once (default :func:`~adapruner_lightning.core.stats.default_buffer_bytes` of the weights: a quarter of their
    bytes, at least 512 MiB)."""
    device = next(model.parameters()).device
    widths = [4 * (layer.o.in_features ** 2 + layer.down.in_features ** 2) for layer in layers]
    budget = buffer_bytes or default_buffer_bytes(list(model.parameters()))
    groups = budget_groups(list(range(len(layers))), widths, budget)
    data = [pool] + ([extra] if extra is not None and extra.numel() else [])
    batches = [rows[start:start + batch_size] for rows in data for start in range(0, rows.shape[0], batch_size)]
    batches = batches[collective.rank::collective.world_size]
    store: list[dict[str, torch.Tensor]] = [{} for _ in layers]
    was_training = model.training
    model.eval()
    try:
        for group in progress_bar(groups, "least-squares statistics", enabled=progress and collective.is_zero):
            sums = {i: _zero_sums(layers[i], device) for i in group}
            last = (group[-1], "down")  # its hook stops the forward
            handles = [getattr(layers[i], m).register_forward_pre_hook(_gram_hook(sums[i], m, (i, m) == last))
                       for i in group for m in MEMBERS]
            try:
                for batch in batches:
                    with contextlib.suppress(_StopForward):
                        model(input_ids=batch.to(device), use_cache=False)
            finally:
                for handle in handles:
                    handle.remove()
            for i in group:
                store[i] = {k: collective.sum_(v.cpu()) for k, v in sums[i].items()}
                del sums[i]
    finally:
        model.train(was_training)
    return GramCache(layers=store, tokens=sum(int(rows.numel()) for rows in data))


def _zero_sums(layer: LayerStructure, device: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    for m in MEMBERS:
        d = getattr(layer, m).in_features
        out[m] = torch.zeros(d, d, dtype=torch.float32, device=device)
        out[f"sum:{m}"] = torch.zeros(d, dtype=torch.float32, device=device)
    return out


def _gram_hook(sums: dict[str, torch.Tensor], member: str, last: bool):
    def hook(module, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        sums[member].addmm_(x.T, x)
        sums[f"sum:{member}"] += x.sum(0)
        if last:
            raise _StopForward
    return hook


@dataclass
class LayerFit:
    """One projection's repair: its removed inputs predicted from its kept ones, ``x_R ~ matrix @ x_S + offset``.

    Attributes:
        kept: kept input columns ``S`` (on the weight's device).
        removed: removed input columns ``R``.
        matrix: ``[|R|, |S|]`` float32 prediction matrix ``M``.
        offset: ``[|R|]`` float32 intercept ``c``.
    """

    kept: torch.Tensor
    removed: torch.Tensor
    matrix: torch.Tensor
    offset: torch.Tensor

    def bias(self, weight: torch.Tensor) -> torch.Tensor:
        """The bias the fit adds to the projection: ``W[:, R] c`` (float32)."""
        return weight.detach()[:, self.removed].float() @ self.offset

    def merged_columns(self, weight: torch.Tensor) -> torch.Tensor:
        """``W[:, S] + W[:, R] M`` (float32): the kept columns once the removed inputs are folded into them."""
        w = weight.detach()
        return w[:, self.kept].float().addmm_(w[:, self.removed].float(), self.matrix)


def solve_fit(mean: torch.Tensor, second: torch.Tensor, removed: list[int], *, damping: float,
              intercept: bool = True, count: float = 1.0) -> LayerFit:
    """The least-squares prediction of the inputs ``removed`` from the others (see the module docstring).

    ``mean`` and ``second / count`` are the inputs' mean and ``E[x x^T]`` (``second`` may be the raw sum over
    ``count`` tokens, which is then not copied whole; any device; the solve runs there in float32,
    holding the kept block ``|S|^2`` twice and ``|S| x |R|`` besides, never another ``d x d`` copy). A singular
    covariance (a dead channel) is handled by the damping; if the factorisation still fails at ``10^6`` times the
    damping, or the result is not finite, the fit falls back to the zeroth order (the mean), which never produces
    NaN weights."""
    d = mean.shape[0]
    device = second.device
    r = torch.as_tensor(sorted(removed), dtype=torch.long, device=device)
    keep = torch.ones(d, dtype=torch.bool, device=device)
    keep[r] = False
    s = keep.nonzero().flatten()
    mean = mean.to(device, torch.float32)
    c_ss = second[s.unsqueeze(1), s].float().div_(count)
    c_sr = second[s.unsqueeze(1), r].float().div_(count)
    if intercept:  # the covariance: E[x x^T] - mu mu^T, block by block
        c_ss.sub_(torch.outer(mean[s], mean[s]))
        c_sr.sub_(torch.outer(mean[s], mean[r]))
    matrix = _ridge(c_ss, c_sr, damping)
    del c_ss, c_sr
    if matrix is None:
        log.warning("least-squares reconstruction: no stable fit of %d removed inputs; using their mean", len(r))
        matrix = torch.zeros(len(r), len(s), dtype=torch.float32, device=device)
    offset = mean[r] - matrix @ mean[s] if intercept else torch.zeros(len(r), dtype=torch.float32, device=device)
    return LayerFit(kept=s, removed=r, matrix=matrix, offset=offset)


def _ridge(c_ss: torch.Tensor, c_sr: torch.Tensor, damping: float) -> torch.Tensor | None:
    """``C_RS (C_SS + lambda I)^-1`` by Cholesky (``c_ss``'s diagonal is damped in place), the damping raised
    tenfold while the factorisation fails; None when it never succeeds or the result is not finite."""
    diagonal = c_ss.diagonal()
    scale = float(diagonal.mean()) if c_ss.numel() else 0.0
    if not scale > 0 or not torch.isfinite(c_ss).all() or not torch.isfinite(c_sr).all():
        return None
    base = diagonal.clone()
    lam = max(damping, 1e-8) * scale
    for _ in range(_RETRIES + 1):
        diagonal.copy_(base + lam)
        factor, info = torch.linalg.cholesky_ex(c_ss)
        if int(info) == 0:
            matrix = torch.cholesky_solve(c_sr, factor).T
            return matrix if torch.isfinite(matrix).all() else None
        lam *= 10
    return None


@dataclass
class LeastSquares:
    """Fits kept columns to the pool's statistics; ``damping`` and ``intercept`` as in :func:`solve_fit`."""

    grams: GramCache
    damping: float = DEFAULT_DAMPING
    intercept: bool = True

    def layer_fits(self, layer: LayerStructure, sel: LayerSelection, *, scoring: bool = False) -> dict[str, LayerFit]:
        """The fits of ``layer``'s o/down under ``sel`` (members that lose nothing or lose every input, a block removed
        whole, are left out), solved in float32
        on the weights' device; the layer's Gram matrices travel there one at a time. ``scoring``: the prediction
        matrices are kept in the weights' dtype (all layers' are held during a trial: 0.14-0.21 x the weights of a
        bf16 Llama-3.1-8B at 20-40 %), else in float32 (:func:`write_fits`, one layer at a time)."""
        out = {}
        for member in MEMBERS:
            removed = removed_columns(layer, sel, member)
            if not removed or sel.removes_block_of(layer, member):  # a block removed whole is not repaired
                continue
            weight = getattr(layer, member).weight
            grams = self.grams.layers[layer.index]
            fit = solve_fit((grams[f"sum:{member}"] / self.grams.tokens).to(weight.device),
                            grams[member].to(weight.device), removed, damping=self.damping, intercept=self.intercept,
                            count=self.grams.tokens)
            if scoring:
                fit.matrix = fit.matrix.to(weight.dtype)
            out[member] = fit
        return out

    def fit(self, layers: list[LayerStructure], selection: dict[int, LayerSelection]) -> Fits:
        """Every layer's fits under ``selection`` (what :func:`substituted` scores)."""
        out = {i: self.layer_fits(layers[i], sel, scoring=True) for i, sel in selection.items()}
        return Fits({i: f for i, f in out.items() if f})

    def describe(self) -> dict[str, object]:
        """Plain-data options of this fit (plan provenance)."""
        return {"damping": self.damping, "intercept": self.intercept, "inputs": "dense", "tokens": self.grams.tokens}

    @classmethod
    def described(cls, grams: GramCache, description: dict[str, object]) -> "LeastSquares":
        """The fit :meth:`describe` recorded (a plan's ``provenance["reconstruction_fit"]``), on ``grams``."""
        return cls(grams, damping=float(description["damping"]), intercept=bool(description["intercept"]))


@dataclass
class Fits:
    """A candidate's least-squares reconstruction: per layer, the :class:`LayerFit` of its o/down projections."""

    fits: dict[int, dict[str, LayerFit]]

    def biases(self, layers: list[LayerStructure]) -> dict[int, dict[str, list[float]]]:
        """The biases the fits add (``W[:, R] c`` per projection) in the plan's format (zero without an intercept)."""
        return {i: {m: fit.bias(getattr(layers[i], m).weight).cpu().tolist() for m, fit in parts.items()}
                for i, parts in self.fits.items()}


@torch.no_grad()
def write_fits(layer: LayerStructure, fits: dict[str, LayerFit]) -> None:
    """Fold ``fits`` into ``layer``'s dense weights in place: ``W[:, S] <- W[:, S] + W[:, R] M`` (computed in
    float32, written back in the weights' dtype). The removed columns are left for the pruner to remove; the bias
    (:meth:`Fits.biases`) travels in the plan."""
    for member, fit in fits.items():
        weight = getattr(layer, member).weight
        weight.index_copy_(1, fit.kept, fit.merged_columns(weight).to(weight.dtype))


@contextlib.contextmanager
def substituted(layers: list[LayerStructure], fits: dict[int, dict[str, LayerFit]]) -> Iterator[None]:
    """Within the block, each fitted projection sees its removed inputs replaced by their prediction from the kept
    ones (forward pre-hooks; no weight changes): the logits of the pruned model with its re-fitted columns and
    bias. Hooks are removed on exit, also on error."""
    handles = []
    try:
        for i, parts in fits.items():
            for member, fit in parts.items():
                module = getattr(layers[i], member)
                handles.append(module.register_forward_pre_hook(_substitute_hook(fit, module.weight.dtype)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _substitute_hook(fit: LayerFit, dtype: torch.dtype):
    matrix, offset = fit.matrix.to(dtype), fit.offset.to(dtype)  # no copy when the fit is in the weights' dtype

    def hook(module, args):
        x = args[0]
        predicted = torch.addmm(offset, x.index_select(-1, fit.kept).reshape(-1, fit.kept.numel()), matrix.T)
        return (x.index_copy(-1, fit.removed, predicted.reshape(*x.shape[:-1], -1)), *args[1:])
    return hook


def legacy_reconstruction(flag: bool | None, reconstruction: str, owner: str) -> str:
    """``reconstruction`` after the deprecated ``bias_compensation`` flag of ``owner`` (True: ``"bias"``, with a
    :class:`DeprecationWarning`; True beside another reconstruction is refused)."""
    if not flag:
        return reconstruction
    warnings.warn(f"{owner}(bias_compensation=True) is deprecated: use reconstruction='bias'", DeprecationWarning,
                  stacklevel=4)
    if reconstruction not in ("none", "bias"):
        raise ConfigError("bias_compensation", True, f"left out with reconstruction={reconstruction!r}",
                          hint="bias_compensation=True is reconstruction='bias'; set reconstruction alone")
    return "bias"


def check_reconstruction(name: str, damping: float) -> None:
    """Raise a clear :class:`ConfigError` for an unknown reconstruction or a damping outside (0, 10]."""
    if name not in RECONSTRUCTIONS:
        raise ConfigError("reconstruction", name, f"one of {list(RECONSTRUCTIONS)}",
                          hint="'bias' is FLAP's bias compensation (the former bias_compensation=True)")
    if not 0 < damping <= 10:
        raise ConfigError("reconstruction_damping", damping, "a fraction of the mean diagonal in (0, 10]",
                          hint=f"the default is {DEFAULT_DAMPING}")
