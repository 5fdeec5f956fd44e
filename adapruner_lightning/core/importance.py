"""Importance metrics (a registry by name) and group reducers.

A metric turns what it needs (weights only, cached per-sample activation statistics, or gradients) into
*member scores*: one non-negative score per output row of ``q/k/v/gate/up`` and per input column of
``o/down``. :func:`unit_scores` then reduces the members of each coupled group with a reducer (``sum``,
``mean``, ``max``, ``prod``, ``first``) into scores per query head, per KV group and per MLP channel;
:func:`standardized_unit_scores` scores units by their mean per-layer z-score instead (FLAP's adaptive structure).

====================  ===========  ==========================================================================
metric                needs        recombines from the per-sample cache?
====================  ===========  ==========================================================================
random                nothing      n/a (seeded)
magnitude_l1/_l2      nothing      n/a (weights only)
taylor_vector         activations  yes, exactly: per sample and channel, sum_t y*dL/dy (= sum_j w*dL/dw)
wanda_sp              activations  yes, exactly: per sample and channel, sum_t x^2
flap                  activations  yes, exactly: per sample and channel, sum_t x and sum_t x^2
flap_reference        activations  yes, as flap (attention channels squared, FLAP's reference code)
obs                   grams        n/a: the pool's input covariance (the least-squares repair's), whatever the samples
taylor                gradients    no: |w * sum_s g_s| needs the subset's summed gradient before the absolute
taylor_second                      value; a gradient pass per new subset reduces each gradient to row/column
taylor_mix                         scores as it arrives, and only those vectors are memoised per subset
====================  ===========  ==========================================================================

Register a metric with :func:`register_metric`; it receives a :class:`ScoreInputs` and returns member scores
for one layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from adapruner_lightning.config import check_choice
from adapruner_lightning.core.groups import LayerStructure
from adapruner_lightning.errors import ConfigError

MEMBERS = ("q", "k", "v", "o", "gate", "up", "down")
ROW_MEMBERS = ("q", "k", "v", "gate", "up")  # scored per output row; "o" and "down" per input column
MemberScores = dict[str, "torch.Tensor | None"]
Needs = Literal["nothing", "activations", "gradients", "grams"]
#: what a metric may need that is read per calibration sample (a metric needing ``grams`` reads the whole pool)
SAMPLE_NEEDS = ("activations", "gradients")


@dataclass
class ScoreInputs:
    """Everything a metric may read for one layer.

    Attributes:
        layer: the layer's modules.
        activation_stats: per-member cached sums over the chosen samples (``tv:<member>``, ``sum:o``,
            ``sq:o``, ``sum:down``, ``sq:down``, ``tokens``), already reduced over the subset.
        gradient_stats: ``{member: scores}``: the member scores of this (element-wise gradient) metric over the
            candidate's samples, as :func:`member_scores` computed them during the gradient pass.
        generator: seeded random generator (for ``random``).
        grams: the layer's pool-wide input sums of ``o_proj`` and ``down_proj`` (``"o"``/``"down"``: ``sum x x^T``,
            ``"sum:o"``/``"sum:down"``: ``sum x``; :class:`~adapruner_lightning.core.reconstruction.GramCache`), for
            metrics that need ``grams``.
        gram_tokens: the tokens ``grams`` sum over.
        damping: the ridge of the least-squares repair, a fraction of the covariance's mean diagonal.
    """

    layer: LayerStructure
    activation_stats: dict[str, torch.Tensor] = field(default_factory=dict)
    gradient_stats: dict[str, torch.Tensor] = field(default_factory=dict)
    generator: torch.Generator | None = None
    grams: dict[str, torch.Tensor] = field(default_factory=dict)
    gram_tokens: int = 0
    damping: float = 0.01


@dataclass(frozen=True)
class MetricSpec:
    """A registered importance metric: its name, what it needs, and the scoring function."""

    name: str
    needs: Needs
    fn: Callable[[ScoreInputs], MemberScores]
    second_order: bool = False
    description: str = ""
    salience: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None
    members: tuple[str, ...] = MEMBERS  # the members it scores (the others are None)


_METRICS: dict[str, MetricSpec] = {}


def register_metric(name: str, needs: Needs, *, second_order: bool = False, description: str = "",
                    members: tuple[str, ...] = MEMBERS):
    """Decorator registering ``fn(inputs: ScoreInputs) -> MemberScores`` under ``name`` (duplicates refused).

    ``members`` declares which members ``fn`` scores (it returns None for the others); the search reads it to know
    where the reducer matters (:func:`reads_reducer`). Gradient metrics are registered with
    :func:`register_gradient_metric` instead."""
    check_choice("needs", needs, ("nothing", "activations", "grams"))
    for member in members:
        check_choice("members[]", member, MEMBERS)
    return _register(name, needs, second_order, description, None, tuple(members))


def _register(name: str, needs: Needs, second_order: bool, description: str, salience: Callable | None,
              members: tuple[str, ...] = MEMBERS):
    def wrap(fn: Callable[[ScoreInputs], MemberScores]) -> Callable[[ScoreInputs], MemberScores]:
        if name in _METRICS:
            raise ConfigError("metric name", name, "a name not registered yet")
        _METRICS[name] = MetricSpec(name, needs, fn, second_order, description or (fn.__doc__ or "").strip(),
                                    salience, members)
        return fn

    return wrap


def register_gradient_metric(name: str, salience: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None],
                                                          torch.Tensor], *, second_order: bool = False,
                             description: str = "") -> MetricSpec:
    """Register an element-wise gradient metric from its ``salience(w, g, h)``.

    ``w`` is a block of weight rows in float32, ``g`` the mean gradient over the candidate's samples and ``h``
    (``second_order`` only) the mean squared per-sample gradient, both of the same shape. A member's score is
    ``sum |salience|`` over each output row (q/k/v/gate/up) or input column (o/down); the statistics pass computes
    it as each gradient arrives (:func:`member_scores`), so only those vectors are ever kept."""
    _register(name, "gradients", second_order, description, salience)(_cached_gradient_scores)
    return _METRICS[name]


def _cached_gradient_scores(inputs: ScoreInputs) -> MemberScores:
    return {m: inputs.gradient_stats[m] for m in MEMBERS}


#: Weight elements converted to float32 at once while scoring a gradient (16 MiB).
SCORE_BLOCK_ELEMENTS = 2**22


def member_scores(spec: MetricSpec, member: str, weight: torch.Tensor, g_sum: torch.Tensor,
                  h_sum: torch.Tensor | None, count: int) -> torch.Tensor:
    """One member's float32 scores under the gradient metric ``spec``: ``sum |salience(w, g_sum / count, h_sum /
    count)|`` over rows or columns, in blocks of rows (no float32 copy of a large weight is made at once)."""
    rows_per_block = max(1, SCORE_BLOCK_ELEMENTS // max(1, weight.shape[1]))
    parts = []
    for start in range(0, weight.shape[0], rows_per_block):
        block = slice(start, start + rows_per_block)
        g = g_sum[block].float() / count
        h = None if h_sum is None else h_sum[block].float() / count
        s = spec.salience(weight[block].float(), g, h).abs()
        parts.append(s.sum(1) if member in ROW_MEMBERS else s.sum(0))
    return torch.cat(parts) if member in ROW_MEMBERS else torch.stack(parts).sum(0)


def get_metric(name: str) -> MetricSpec:
    """Return the registered metric ``name`` or raise :class:`ConfigError` listing the names."""
    check_choice("metric", name, _METRICS)
    return _METRICS[name]


def metric_names() -> list[str]:
    """All registered metric names."""
    return sorted(_METRICS)


def reads_reducer(name: str) -> bool:
    """Whether metric ``name``'s unit scores depend on the reducer of :func:`unit_scores`: only where some unit
    combines two or more scored members (a query head q/o, a KV group q/k/v/o, an MLP channel gate/up/down). A
    metric scoring the o/down input columns alone (``wanda_sp``, ``flap``) gives every unit one member, which every
    reducer returns unchanged."""
    members = set(get_metric(name).members)
    return len(members & {"q", "k", "v", "o"}) > 1 or len(members & {"gate", "up", "down"}) > 1


def _weight(layer: LayerStructure, member: str) -> torch.Tensor:
    return getattr(layer, member).weight.detach().float()


def _weight_norms(layer: LayerStructure, p: int) -> MemberScores:
    out: MemberScores = {}
    for member in MEMBERS:
        w = _weight(layer, member)
        dim = 1 if member in ROW_MEMBERS else 0
        out[member] = w.norm(p=p, dim=dim)
    return out


@register_metric("random", "nothing")
def _random(inputs: ScoreInputs) -> MemberScores:
    """Uniform random scores (a baseline)."""
    layer = inputs.layer
    sizes = {m: getattr(layer, m).out_features if m in ROW_MEMBERS else getattr(layer, m).in_features for m in MEMBERS}
    return {m: torch.rand(n, generator=inputs.generator) for m, n in sizes.items()}


@register_metric("magnitude_l1", "nothing")
def _magnitude_l1(inputs: ScoreInputs) -> MemberScores:
    """L1 norm of each row/column of the weights."""
    return _weight_norms(inputs.layer, 1)


@register_metric("magnitude_l2", "nothing")
def _magnitude_l2(inputs: ScoreInputs) -> MemberScores:
    """L2 norm of each row/column of the weights."""
    return _weight_norms(inputs.layer, 2)


@register_metric("taylor_vector", "activations")
def _taylor_vector(inputs: ScoreInputs) -> MemberScores:
    """Vector-wise first-order Taylor |sum_j w_j dL/dw_j| per row/column (LLM-Pruner 'vectorize')."""
    return {m: inputs.activation_stats[f"tv:{m}"].abs() for m in MEMBERS}


def _input_norms(inputs: ScoreInputs, member: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    stats = inputs.activation_stats
    tokens = stats["tokens"].clamp_min(1)
    return stats[f"sum:{member}"], stats[f"sq:{member}"], tokens


@register_metric("wanda_sp", "activations", members=("o", "down"))
def _wanda_sp(inputs: ScoreInputs) -> MemberScores:
    """Wanda-sp: ||X_j||_2 * sum_i |W_ij| for the input channels of o_proj and down_proj."""
    out: MemberScores = dict.fromkeys(MEMBERS)
    for member in ("o", "down"):
        _, sq, _ = _input_norms(inputs, member)
        out[member] = sq.sqrt() * _weight(inputs.layer, member).abs().sum(0)
    return out


@register_metric("flap", "activations", members=("o", "down"))
def _flap(inputs: ScoreInputs) -> MemberScores:
    """FLAP fluctuation: Var_t(X_j) * ||W_:j||^2 for the input channels of o_proj and down_proj."""
    out: MemberScores = dict.fromkeys(MEMBERS)
    for member in ("o", "down"):
        total, sq, tokens = _input_norms(inputs, member)
        mean = total / tokens
        variance = (sq / tokens - mean.square()).clamp_min(0)
        out[member] = variance * _weight(inputs.layer, member).square().sum(0)
    return out


@register_metric("flap_reference", "activations", members=("o", "down"))
def _flap_reference(inputs: ScoreInputs) -> MemberScores:
    """FLAP's WIFV score as its reference code computes it (CASIA-IVA-Lab/FLAP, ``lib/prune.py``, ``prune_flap``).

    Per input channel ``j`` of ``o_proj`` and ``down_proj``: ``Var_t(X_j) * sum_i W_ij^2`` (the ``flap`` metric),
    and for ``o_proj`` that value *squared* (the reference's ``metrics[...](...) ** 2`` for attention) before a
    head's channels are combined. Use it with ``scope="standardized"`` (FLAP's adaptive structure: per-layer
    z-scores, one global threshold). The variance is over every calibration token (the reference's running update
    skips the first sample's fluctuation and updates its mean in place; those quirks are not reproduced).
    """
    out = _flap(inputs)
    out["o"] = out["o"].square()
    return out


def _inverse_covariance(inputs: ScoreInputs, member: str) -> torch.Tensor:
    """``(C + lambda I)^-1`` of the member's inputs, ``C`` their covariance over the pool and ``lambda`` the
    repair's damping times ``C``'s mean diagonal (float32, on the layer's device). A dead input (a zero row and
    column of ``C``) only meets the ridge; if even the damped matrix cannot be factorised, the damping grows
    tenfold until it can. At most three ``d x d`` matrices at once (the covariance, built in place in a copy of
    the Gram, its factor and the inverse): 2.5 GB for ``down_proj`` at Llama-3.1-8B's shape."""
    device = inputs.layer.o.weight.device
    tokens = max(inputs.gram_tokens, 1)
    mean = inputs.grams[f"sum:{member}"].to(device, torch.float32) / tokens
    cov = inputs.grams[member].to(device, torch.float32, copy=True).div_(tokens).addr_(mean, mean, alpha=-1)
    ridge = cov.diagonal().mean().clamp_min(1e-12) * inputs.damping  # a tensor: no sync (and none on meta)
    added = torch.zeros_like(ridge)
    for _ in range(8):
        cov.diagonal().add_(ridge - added)  # the lower triangle is all the factorisation reads
        added = ridge
        factor, info = torch.linalg.cholesky_ex(cov)
        if factor.is_meta or int(info) == 0:  # meta: a shape-only run has nothing to check
            del cov
            return torch.cholesky_inverse(factor)
        ridge = ridge * 10
    raise ConfigError("obs metric", "an input covariance that no damping makes positive definite",
                      "finite activations on the calibration pool", hint="check the model's weights for NaN/inf")


@register_metric("obs", "grams", members=("o", "down"))
def _obs(inputs: ScoreInputs) -> MemberScores:
    """What removing a unit costs once the least-squares repair has re-fitted the kept inputs (structured OBS, as
    SlimGPT and ZipLM score columns): per MLP channel ``j`` of ``down_proj``, ``||W_:j||^2 / [A]_jj`` with
    ``A = (C + lambda I)^-1`` of the inputs' covariance ``C`` (the repair's: the pool and the reconstruction windows); per attention head ``h`` (its ``o_proj``
    columns ``H``), ``tr(W_:H ([A]_HH)^-1 W_:H^T)``, shared evenly by the head's columns. It is the increase of
    the projection's mean squared output error when that unit alone goes and the rest are re-fitted with an
    intercept (``reconstruction="lstsq"``); with a diagonal ``C`` and no damping it is FLAP's fluctuation
    ``Var(X_j) ||W_:j||^2``. The covariance is the whole pool's (the repair's), whatever the candidate's samples."""
    out: MemberScores = dict.fromkeys(MEMBERS)
    w = _weight(inputs.layer, "down")
    out["down"] = w.square().sum(0) / _inverse_covariance(inputs, "down").diagonal()
    inverse, hd, n = _inverse_covariance(inputs, "o"), inputs.layer.head_dim, inputs.layer.num_heads
    blocks = inverse.view(n, hd, n, hd).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # [heads, hd, hd]: [A]_HH
    w = _weight(inputs.layer, "o").T.reshape(n, hd, -1)  # [heads, hd, out]: W_:H^T
    heads = (w * torch.linalg.solve(blocks, w)).sum((1, 2))  # tr(W_:H [A]_HH^-1 W_:H^T)
    out["o"] = (heads / hd).repeat_interleave(hd)
    return out


def score_members(spec: MetricSpec, inputs: ScoreInputs) -> MemberScores:
    """``spec``'s member scores of ``inputs``, computed on the device of the layer's weights and returned there.

    The statistics caches stay on the host (they grow with the pool) while the weights sit on the accelerator;
    the reduced statistics of one layer are vectors, so they travel to the weights, never the weights to them.
    """
    device = inputs.layer.o.weight.device
    moved = replace(inputs, activation_stats={k: v.to(device) for k, v in inputs.activation_stats.items()},
                    gradient_stats={k: v.to(device) for k, v in inputs.gradient_stats.items()})
    return {m: None if t is None else t.to(device) for m, t in spec.fn(moved).items()}


def _standardise(scores: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` over one layer's channels (unbiased std, as ``torch.std`` in FLAP's reference)."""
    scores = scores.double()
    std = scores.std()
    return (scores - scores.mean()) / (std if float(std) > 0 else 1.0)


def standardized_unit_scores(layer: LayerStructure, members: MemberScores) -> UnitScores:
    """FLAP's adaptive-structure scores of ``layer``: each member's channel scores standardised within the layer
    (z-scores), then each unit scored by the *mean* z-score of its channels, so that attention units and MLP
    channels of every layer compare on one scale (reference: ``standarlization`` and ``.mean(dim=2)`` in
    ``prune_flap``, structure ``AL-AM``). Members a metric leaves out are skipped; the reducer is not used.
    """
    z = {m: None if t is None else _standardise(t) for m, t in members.items()}
    heads, kv = layer.num_heads, layer.num_kv_heads

    def mean_of(parts: list[torch.Tensor | None]) -> torch.Tensor:
        present = [t for t in parts if t is not None]
        if not present:
            raise ConfigError("metric", "no member scores", "scores for o/q (attention) and down/gate/up (MLP)")
        return torch.stack(present).mean(0)

    def grouped(t: torch.Tensor | None, n: int) -> torch.Tensor | None:
        return None if t is None else t.view(n, -1).mean(1)

    return UnitScores(
        heads=mean_of([grouped(z["q"], heads), grouped(z["o"], heads)]).float(),
        kv_groups=mean_of([grouped(z[m], kv) for m in ("q", "k", "v", "o")]).float(),
        channels=mean_of([z["gate"], z["up"], z["down"]]).float(),
    )


register_gradient_metric("taylor", lambda w, g, h: w * g,
                         description="Element-wise first-order Taylor sum |w * g| (LLM-Pruner 'param_first').")
register_gradient_metric("taylor_second", lambda w, g, h: w * h * w, second_order=True,
                         description="Element-wise second-order term sum |w^2 * H_diag| with the Fisher diagonal "
                                     "(LLM-Pruner 'param_second').")
register_gradient_metric("taylor_mix", lambda w, g, h: w * g - 0.5 * w * h * w, second_order=True,
                         description="Element-wise |w*g - 0.5 w^2 H_diag| (LLM-Pruner 'param_mix').")


# ---------------------------------------------------------------------------------------------- reducers

def _reduce_first(stack: torch.Tensor) -> torch.Tensor:
    return stack[0]


REDUCERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sum": lambda s: s.sum(0),
    "mean": lambda s: s.mean(0),
    "max": lambda s: s.max(0).values,
    "prod": lambda s: s.prod(0),
    "first": _reduce_first,
}


def reduce_members(parts: list[torch.Tensor | None], reducer: str) -> torch.Tensor:
    """Combine the per-unit scores of a group's members (absent members skipped) with ``reducer``."""
    check_choice("reducer", reducer, REDUCERS)
    present = [p for p in parts if p is not None]
    return REDUCERS[reducer](torch.stack(present))


@dataclass
class UnitScores:
    """Scores of one layer's removable units (higher = more important)."""

    heads: torch.Tensor  # [num_heads]: one query head (its q rows + o columns)
    kv_groups: torch.Tensor  # [num_kv_heads]: a KV head with its query heads
    channels: torch.Tensor  # [intermediate]: one MLP channel

    def cpu(self) -> UnitScores:
        """These scores on the host (where selection compares them across layers)."""
        return UnitScores(heads=self.heads.cpu(), kv_groups=self.kv_groups.cpu(), channels=self.channels.cpu())


def unit_scores(layer: LayerStructure, members: MemberScores, reducer: str) -> UnitScores:
    """Reduce member scores into per-head, per-KV-group and per-channel scores for ``layer``."""
    hd, heads, kv = layer.head_dim, layer.num_heads, layer.num_kv_heads

    def per_head(t: torch.Tensor | None, n: int) -> torch.Tensor | None:
        return None if t is None else t.view(n, hd).sum(1)

    q, o = per_head(members["q"], heads), per_head(members["o"], heads)
    k, v = per_head(members["k"], kv), per_head(members["v"], kv)

    def per_group(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.view(kv, heads // kv).sum(1)

    return UnitScores(
        heads=reduce_members([q, o], reducer),
        kv_groups=reduce_members([per_group(q), k, v, per_group(o)], reducer),
        channels=reduce_members([members["gate"], members["up"], members["down"]], reducer),
    )
