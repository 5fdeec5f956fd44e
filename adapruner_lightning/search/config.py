"""SearchConfig: the Bayesian search over the pruning solution space, in three sections.

The YAML reads as the design does::

    search:
      trials: 8                 # candidates scored (0: no search)
      data:   {pool_size: 64, objective_windows: 8, objective_seq_len: 256}
      engine: {name: gp, init_points: 4}
      space:  {metrics: [taylor, flap], keep_layers: true, layer_ramp: true}

``data`` is what a search reads (the calibration pool and the held-apart objective windows), ``engine`` how
points are proposed, ``space`` which dimensions are searched. In Python, :meth:`SearchConfig.of` also takes
the 0.1 flat names (``SearchConfig.of(trials=8, pool_size=32, engine="tpe")``).

The number of calibration samples a candidate reads is ``num_samples`` everywhere: the searched dimension (in
``[2, pool_size]``, ``space.vary_num_samples``), and otherwise ``pruning.num_samples``
(:class:`~adapruner_lightning.core.config.PruningConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional, get_args

from adapruner_lightning.config import check_choice, check_literal, check_non_negative, check_positive, deprecated
from adapruner_lightning.core.config import Scope
from adapruner_lightning.core.importance import REDUCERS, SAMPLE_NEEDS, get_metric, metric_names, reads_reducer
from adapruner_lightning.core.objective import ObjectiveKind
from adapruner_lightning.core.reconstruction import RECONSTRUCTIONS
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.search.allocation import AllocationConfig
from adapruner_lightning.search.training_aware import TrainingAwareConfig
from adapruner_lightning.search.dimensions import Below, Dimension, where
from adapruner_lightning.search.engines import SearchEngine

__all__ = ["AllocationConfig", "BASELINE_POINTS", "DEFAULT_METRICS", "SCOPES", "SearchConfig", "SearchData",
           "SearchEngine", "SearchSpaceConfig"]

DEFAULT_METRICS = ("taylor", "taylor_vector", "wanda_sp", "flap", "flap_reference", "obs", "magnitude_l2")
#: the published baselines as points of the space, evaluated first by default (``space.warm_start: null``):
#: FLAP as its reference code runs it (``main.py``: 2,048 calibration samples) and LLM-Pruner's default (taylor,
#: layerwise, layers [4, N-2) kept whole, 10 samples), then FLAP's selection with the least-squares reconstruction
#: (the floor the reconstruction sets) and the structured-OBS selection (``obs``, SlimGPT/ZipLM's column score) in
#: FLAP's adaptive structure with the same repair: on development windows it is 0.95x FLAP + least squares at 30%
#: and 40% and 1.05x at 20% (``benchmarks/results/selection.md``), so the search's objective decides between
#: them; ``num_samples`` is clipped to the pool (``obs`` and ``lstsq`` read the whole pool whatever it is)
BASELINE_POINTS: tuple[dict[str, Any], ...] = (
    {"metric": "flap_reference", "reducer": "sum", "scope": "standardized", "reconstruction": "bias",
     "keep_first": 0, "keep_last": 0, "layer_ramp": 0.0, "num_samples": 2048},
    {"metric": "taylor", "reducer": "sum", "scope": "layerwise", "reconstruction": "none",
     "keep_first": 4, "keep_last": 2, "layer_ramp": 0.0, "num_samples": 10},
    {"metric": "flap_reference", "reducer": "sum", "scope": "standardized", "reconstruction": "lstsq",
     "keep_first": 0, "keep_last": 0, "layer_ramp": 0.0, "num_samples": 2048},
    {"metric": "obs", "reducer": "sum", "scope": "standardized", "reconstruction": "lstsq",
     "keep_first": 0, "keep_last": 0, "layer_ramp": 0.0, "num_samples": 2048},
)
#: the choices of the searched ``scope`` dimension
SCOPES: tuple[str, ...] = get_args(Scope)
#: the scopes that score units with the reducer and weight layers by ``layer_ramp`` (``core.selection``;
#: ``standardized`` ranks FLAP's mean z-scores of every layer on one scale, unweighted)
REDUCED_SCOPES = ("layerwise", "global")
DEFAULT_REDUCERS = ("sum", "mean", "max", "first")


@dataclass
class SearchData:
    """The samples a search reads: the calibration pool it picks subsets from, and the objective windows.

    Args:
        pool_size: calibration pool size N (candidate samples).
        objective_windows: held-apart windows scoring each candidate.
        objective_seq_len: tokens per objective window.
        objective: what scores a candidate on those windows: ``"perplexity"`` (negative log perplexity) or
            ``"kl"`` (negative mean KL divergence from the dense model's next-token distributions, computed once
            and kept as its ``kl_top_k`` most likely tokens per position plus the rest's mass).
        kl_top_k: tokens per position the ``"kl"`` objective keeps of the dense distribution.
        reconstruction_windows: at most this many more calibration windows (beyond the pool: the first fine-tune
            windows of the calibration texts, or of the train loader) that the least-squares reconstruction's
            statistics sum over (and so the ``obs`` metric's covariance, which is the repair's; no other unit score
            reads them); they never overlap the objective or development windows, nor ``TextDataModule``'s
            validation windows (a datamodule of your own marks its own with ``DataSplits.validation``). 96 windows
            of ``max(pruning.sample_len, objective_seq_len)`` tokens (256 by default; a train loader's rows are as
            long as they are) give the repair 4x the pool's 8k tokens (0: the pool alone; chosen on development
            data, ``benchmarks/results/reconstruction_data.md``).
        subset_size: deprecated: the samples a candidate reads while ``space.vary_num_samples`` is off are
            ``pruning.num_samples``; given (a :class:`DeprecationWarning`), it still takes their place.
    """

    pool_size: int = 64
    objective_windows: int = 8
    objective_seq_len: int = 256
    objective: ObjectiveKind = "perplexity"
    kl_top_k: int = 64
    reconstruction_windows: int = 96
    subset_size: Optional[int] = None

    def __post_init__(self) -> None:
        check_positive("search.data.pool_size", self.pool_size)
        if self.subset_size is not None:
            deprecated("search.data.subset_size", "pruning.num_samples", stacklevel=3)
            check_positive("search.data.subset_size", self.subset_size)
            if self.subset_size > self.pool_size:
                raise ConfigError("search.data.subset_size", self.subset_size, f"at most pool_size={self.pool_size}",
                                  hint="lower pruning.num_samples or enlarge the calibration pool")
        check_positive("search.data.objective_windows", self.objective_windows)
        if self.objective_seq_len < 8:
            raise ConfigError("search.data.objective_seq_len", self.objective_seq_len, "at least 8 tokens")
        check_literal("search.data.objective", self.objective, ObjectiveKind)
        check_positive("search.data.kl_top_k", self.kl_top_k)
        check_non_negative("search.data.reconstruction_windows", self.reconstruction_windows)


@dataclass
class SearchSpaceConfig:
    """Which dimensions of the solution space are searched (the rest take the PruningConfig's values).

    Args:
        metrics: importance metrics the search may pick.
        reducers: group reducers the search may pick.
        subset_dims: coordinates encoding the calibration subset: samples are embedded by PCA of their cached
            statistics and a candidate takes the ``num_samples`` samples nearest to a searched point (similar
            points give overlapping subsets, which a GP can model, unlike N independent bits or one seed integer).
        vary_num_samples: search the number of samples ``num_samples`` in [2, pool size] (off: every candidate
            reads ``pruning.num_samples``, clipped to the pool). On by default: activation metrics read the cached
            per-sample statistics at any count for free, and FLAP's statistics keep improving with more samples
            (docs/results.md, "The calibration subset").
        keep_layers: search how many first/last layers stay whole (up to max_keep_first/last).
        max_keep_first: most leading layers kept whole.
        max_keep_last: most trailing layers kept whole.
        layer_ramp: search the per-layer ratio slope in [-1, 1].
        attn_share: search the share of attention in the removed parameters in [0, 0.6].
        scope: search the selection scope: layerwise, global or standardized (FLAP's per-layer z-scores).
        reconstruction: search how the removed channels are made up for, among ``reconstructions`` (scored under
            masks as exported; :mod:`~adapruner_lightning.core.reconstruction`).
        reconstructions: the choices: ``"none"``, ``"bias"`` (FLAP's bias compensation), ``"lstsq"`` (kept
            columns re-fitted in least squares on the pool).
        bias_compensation: deprecated: ``True`` searches ``reconstructions=["none", "bias"]`` (the space before
            ``lstsq``), ``False`` does not search the reconstruction.
        warm_start: points evaluated first (in place of the first random ``init_points``), each a dict of
            searched dimensions (metric, reducer, keep_first, keep_last, layer_ramp, attn_share, scope,
            reconstruction, num_samples; the deprecated keys ``bias_compensation: true`` and ``k`` are
            ``reconstruction: bias`` and ``num_samples``); keys of dimensions not searched are left out, the
            calibration subset stays random; a ``num_samples`` above the pool's size takes the whole pool). None (default): the published
            baselines' settings (:data:`BASELINE_POINTS`: FLAP's reference configuration, LLM-Pruner's default,
            each with its own sample count, then FLAP's and the structured-OBS selection with least squares) that
            lie in this space, so the search starts where the baselines
            end; ``[]``: none (the paper's AdaPruner, random initial points only).
        vary_subset_size: deprecated name of ``vary_num_samples`` (a :class:`DeprecationWarning`).
    """

    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    reducers: list[str] = field(default_factory=lambda: list(DEFAULT_REDUCERS))
    subset_dims: int = 2
    vary_num_samples: bool = True
    keep_layers: bool = True
    max_keep_first: int = 4
    max_keep_last: int = 2
    layer_ramp: bool = True
    attn_share: bool = False
    scope: bool = True
    reconstruction: bool = True
    reconstructions: list[str] = field(default_factory=lambda: list(RECONSTRUCTIONS))
    bias_compensation: Optional[bool] = None
    warm_start: Optional[list[dict[str, Any]]] = None
    vary_subset_size: Optional[bool] = None

    def __post_init__(self) -> None:
        if not self.metrics:
            raise ConfigError("search.space.metrics", self.metrics, f"a non-empty list drawn from {metric_names()}")
        for name in self.metrics:
            check_choice("search.space.metrics[]", name, metric_names())
        if not self.reducers:
            raise ConfigError("search.space.reducers", self.reducers, f"a non-empty list drawn from {sorted(REDUCERS)}")
        for name in self.reducers:
            check_choice("search.space.reducers[]", name, REDUCERS)
        check_positive("search.space.subset_dims", self.subset_dims)
        check_non_negative("search.space.max_keep_first", self.max_keep_first)
        check_non_negative("search.space.max_keep_last", self.max_keep_last)
        self._legacy_names()
        if not self.reconstructions:
            raise ConfigError("search.space.reconstructions", self.reconstructions,
                              f"a non-empty list drawn from {list(RECONSTRUCTIONS)}")
        for name in self.reconstructions:
            check_choice("search.space.reconstructions[]", name, RECONSTRUCTIONS)
        for point in self.warm_start or []:
            self._check_point(point)

    def dimensions(self, pool: int | None = None, coords: int = 0) -> dict[str, Dimension]:
        """The one table of the space: each searched dimension, in order, with its bound (a category list, a
        ``(low, high)`` float range or a ``(low, high, int)`` inclusive integer range), its canonical value and
        where it matters (a condition reads only dimensions before it and the fixed values of what is not searched;
        ``core.selection`` and ``core.importance`` are the ground truth, ``tests/search/test_dimensions.py`` checks each):

        * ``reducer``: only for the ``layerwise``/``global`` scopes (``standardized`` scores units by mean z-scores)
          and metrics whose units combine several members (not ``wanda_sp``/``flap``: o/down columns alone);
        * ``num_samples`` and the subset coordinates ``u0..``: only where the samples are read (a metric that needs
          data, or FLAP's bias reconstruction: it adds the candidate's mean activations; ``lstsq`` reads the whole
          pool); ``u0..`` also only while ``num_samples`` < the pool;
        * ``layer_ramp``: only for the ``layerwise``/``global`` scopes;
        * ``attn_share``: only while attention is pruned at all (``PruningConfig.prune_attention``).

        ``pool`` (the pool's size, None before it is known) bounds ``num_samples``; ``coords`` subset coordinates are added
        (:class:`~adapruner_lightning.search.space.SearchSpace` knows how many). A category list of one value is no
        dimension (:class:`~adapruner_lightning.search.dimensions.ConditionalSpace` fixes it)."""
        reads_samples = (where(metric=tuple(m for m in self.metrics if get_metric(m).needs in SAMPLE_NEEDS))
                         | where(reconstruction=("bias",)))
        dims: dict[str, Dimension] = {"metric": Dimension(list(self.metrics), self.metrics[0])}
        if self.scope:
            dims["scope"] = Dimension(list(SCOPES), SCOPES[0])
        if self.reconstruction:  # a list of one choice is no dimension: ConditionalSpace fixes it
            dims["reconstruction"] = Dimension(list(self.reconstructions), self.reconstructions[0])
        dims["reducer"] = Dimension(list(self.reducers), self.reducers[0],
                                    where(scope=REDUCED_SCOPES, metric=tuple(filter(reads_reducer, self.metrics))))
        if self.vary_num_samples:
            dims["num_samples"] = Dimension((min(2, pool or 2), pool, int), pool, reads_samples)
        for i in range(coords):
            dims[f"u{i}"] = Dimension((0.0, 1.0), 0.5, reads_samples & where(num_samples=Below(pool)))
        if self.keep_layers:
            dims.update(keep_first=Dimension((0, self.max_keep_first, int), 0),
                        keep_last=Dimension((0, self.max_keep_last, int), 0))
        if self.layer_ramp:
            dims["layer_ramp"] = Dimension((-1.0, 1.0), 0.0, where(scope=REDUCED_SCOPES))
        if self.attn_share:
            dims["attn_share"] = Dimension((0.0, 0.6), 0.0, where(prune_attention=(True,)))
        return dims

    def _legacy_names(self) -> None:
        """Map the deprecated switches (``bias_compensation``, ``vary_subset_size``) and warm-start keys
        (:data:`LEGACY_POINT_KEYS`) onto their names."""
        if self.bias_compensation is not None:
            deprecated("search.space.bias_compensation", "reconstruction / reconstructions", stacklevel=4)
            self.reconstruction = self.bias_compensation
            if self.bias_compensation:
                self.reconstructions = ["none", "bias"]
            self.bias_compensation = None
        if self.vary_subset_size is not None:
            deprecated("search.space.vary_subset_size", "vary_num_samples", stacklevel=4)
            self.vary_num_samples, self.vary_subset_size = self.vary_subset_size, None
        for key in sorted({key for point in self.warm_start or [] for key in point if key in LEGACY_POINT_KEYS}):
            deprecated(f"the warm-start key {key}", LEGACY_POINT_KEYS[key][0], stacklevel=4)
        if self.warm_start:
            self.warm_start = [_legacy_point(point) for point in self.warm_start]

    def _check_point(self, point: dict[str, Any]) -> None:
        """A warm-start point: known dimensions, values inside the space."""
        dims = self.dimensions()
        known = {"metric", "reducer", "keep_first", "keep_last", "layer_ramp", "attn_share", "scope",
                 "reconstruction", "num_samples"}
        for key, value in point.items():
            if key not in known:
                raise ConfigError("search.space.warm_start key", key, f"one of {sorted(known)}")
            if key in dims and not _inside(dims[key].bound, value):
                raise ConfigError(f"search.space.warm_start {key}", value,
                                  f"a value of the searched space: {dims[key].bound}",
                                  hint="widen search.space (metrics, max_keep_first ...) or change the point")

    def warm_points(self) -> list[dict[str, Any]]:
        """The warm-start points restricted to the searched dimensions (the default: the baselines in the space)."""
        dims = self.dimensions()
        points = self.warm_start if self.warm_start is not None else [
            p for p in BASELINE_POINTS if all(k not in dims or _inside(dims[k].bound, v) for k, v in p.items())]
        restricted = [{k: v for k, v in p.items()
                       if k in dims and (not isinstance(dims[k].bound, list) or len(dims[k].bound) > 1)} for p in points]
        if self.warm_start is not None:  # the user's points as given (a repeated plan costs nothing)
            return restricted
        return [p for i, p in enumerate(restricted) if p not in restricted[:i]]  # a dimension left out may merge two


#: deprecated warm-start keys: what the warning names instead, and the ``(key, value)`` each value maps onto
LEGACY_POINT_KEYS: dict[str, tuple[str, Callable[[Any], tuple[str, Any]]]] = {
    "bias_compensation": ("reconstruction: bias / none", lambda on: ("reconstruction", "bias" if on else "none")),
    "k": ("num_samples", lambda count: ("num_samples", count)),
}


def _legacy_point(point: dict[str, Any]) -> dict[str, Any]:
    """A warm-start point with its deprecated keys (:data:`LEGACY_POINT_KEYS`) under their names."""
    mapped = dict(LEGACY_POINT_KEYS[k][1](v) for k, v in point.items() if k in LEGACY_POINT_KEYS)
    return {**mapped, **{k: v for k, v in point.items() if k not in LEGACY_POINT_KEYS}}


def _inside(bound: Any, value: Any) -> bool:
    """Whether ``value`` lies in a :meth:`SearchSpaceConfig.dimensions` bound (categories or inclusive range)."""
    if isinstance(bound, list):
        return value in bound
    return bound[0] <= value and (bound[1] is None or value <= bound[1])


@dataclass
class SearchConfig:
    """The Bayesian search over the pruning solution space (AdaPruner).

    Args:
        trials: candidates evaluated (0: no search, the PruningConfig is used as it is).
        time_budget_s: stop starting new trials, then generations of the allocation stage, after this many
            seconds from the first trial (None: no limit; the stage's two seeds are always scored).
        trace_path: JSONL file each finished trial is appended to; an existing file resumes the search.
        data: the calibration pool and objective windows (:class:`SearchData`).
        engine: how points are proposed (:class:`SearchEngine`).
        space: which dimensions are searched (:class:`SearchSpaceConfig`).
        allocation: the per-layer allocation stage after the search
            (:class:`~adapruner_lightning.search.allocation.AllocationConfig`; off while ``generations`` is 0).
        training_aware: the training-aware selection stage between the two: the best few plans trained a few
            steps and ranked again (:class:`~adapruner_lightning.search.training_aware.TrainingAwareConfig`; off
            while ``candidates`` is 0).

    Example::

        SearchConfig(trials=16, engine=SearchEngine("tpe"), data=SearchData(pool_size=32))
        SearchConfig.of(trials=16, engine="tpe", pool_size=32)      # the same, with flat names
    """

    trials: int = 16
    time_budget_s: Optional[float] = None
    trace_path: Optional[str] = None
    data: SearchData = field(default_factory=SearchData)
    engine: SearchEngine = field(default_factory=SearchEngine)
    space: SearchSpaceConfig = field(default_factory=SearchSpaceConfig)
    allocation: AllocationConfig = field(default_factory=AllocationConfig)
    training_aware: TrainingAwareConfig = field(default_factory=TrainingAwareConfig)

    def __post_init__(self) -> None:
        check_non_negative("search.trials", self.trials)
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ConfigError("search.time_budget_s", self.time_budget_s, "a positive number of seconds or None")
        for name, kind in _SECTIONS.items():
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"search.{name}", getattr(self, name), f"a {kind.__name__}",
                                  hint=f"pass {kind.__name__}(...) or use SearchConfig.of(...) with flat names")

    @classmethod
    def of(cls, **options: Any) -> "SearchConfig":
        """Build a config from flat names: the top-level fields, any section field (``pool_size``,
        ``init_points``, ``metrics`` ...), ``engine`` for ``engine.name``, and 0.1's ``search_<dim>`` names for
        the space's switches (``search_layer_ramp`` = ``space.layer_ramp``, ``search_subset_size`` =
        ``space.vary_num_samples``)."""
        sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
        top: dict[str, Any] = {}
        for name, value in options.items():
            section, key = _FLAT.get(name, (None, name))
            if section is None and name not in _TOP:
                raise ConfigError("SearchConfig option", name, f"one of {sorted([*_TOP, *_FLAT])}")
            (sections[section] if section else top)[key] = value
        return cls(**top, **{name: kind(**sections[name]) for name, kind in _SECTIONS.items()})


_TOP = ("trials", "time_budget_s", "trace_path")
#: SearchConfig's sections and their types
_SECTIONS: dict[str, type] = {"data": SearchData, "engine": SearchEngine, "space": SearchSpaceConfig,
                              "allocation": AllocationConfig, "training_aware": TrainingAwareConfig}
_FLAT: dict[str, tuple[str, str]] = {
    **{f.name: ("data", f.name) for f in fields(SearchData)},
    **{f.name: ("engine", f.name) for f in fields(SearchEngine) if f.name != "name"},
    "engine": ("engine", "name"),
    **{f.name: ("space", f.name) for f in fields(SearchSpaceConfig)},
    **{f.name: ("allocation", f.name) for f in fields(AllocationConfig)},
    **{f"train_{f.name}": ("training_aware", f.name) for f in fields(TrainingAwareConfig)},
    **{f"search_{n}": ("space", n) for n in ("keep_layers", "layer_ramp", "attn_share", "scope", "reconstruction",
                                             "bias_compensation")},
    "search_subset_size": ("space", "vary_num_samples"),
}
