"""Typed configuration dataclasses (LightningCLI and jsonargparse build them from YAML).

Each validates itself in ``__post_init__``; the error names the field, the value and the allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from adapruner_lightning.errors import ConfigError, check_choice, check_fraction
from adapruner_lightning.importance import REDUCERS, metric_names

Scope = Literal["layerwise", "global"]
AttentionUnit = Literal["auto", "kv_group", "query_head"]


def _positive(what: str, value: int) -> int:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(what, value, "a positive integer")
    return value


def _non_negative(what: str, value: int) -> int:
    if not isinstance(value, int) or value < 0:
        raise ConfigError(what, value, "a non-negative integer")
    return value


@dataclass
class PruningConfig:
    """How much to prune and how one candidate is scored and selected.

    Args:
        target_ratio: fraction of parameters to remove, in (0, 1).
        ratio_basis: ``"total"`` (all parameters, embeddings included) or ``"prunable"`` (decoder projections).
        metric: importance metric name (see ``importance.metric_names()``).
        reducer: how a coupled group's member scores combine: sum, mean, max, prod, first.
        scope: ``"layerwise"`` (same share per pruned layer, LLM-Pruner style) or ``"global"`` ranking.
        per_layer: ``"uniform"`` forces identical layer shapes (plain ``from_pretrained`` reloads the export).
        attention_unit: ``"kv_group"``, ``"query_head"`` (uniform within KV groups) or ``"auto"``.
        keep_first: leading layers kept whole (LLM-Pruner keeps 4 of 32).
        keep_last: trailing layers kept whole (LLM-Pruner keeps 2 of 32).
        attn_share: fraction of the removed parameters taken from attention (None: by importance / same ratio).
        layer_ramp: per-layer ratio slope in [-2, 2]; > 0 prunes later layers more.
        round_to: MLP widths stay multiples of this (8/64 for efficient kernels).
        prune_attention: whether attention may lose units at all.
        bias_compensation: FLAP's bias compensation: the mean contribution of the removed ``o_proj`` /
            ``down_proj`` input channels over the candidate's calibration samples is added to those layers as a
            bias (stored in the plan; exports then reload with ``load_pruned``). Search trials score it under
            masks too; ``SearchConfig.search_bias_compensation`` lets the search choose.
        num_samples: calibration samples used for the importance (k).
        sample_len: tokens per calibration sample.
        seed: seed for sample choice, random metric and search.
    """

    target_ratio: float = 0.2
    ratio_basis: Literal["total", "prunable"] = "total"
    metric: str = "taylor"
    reducer: str = "sum"
    scope: Scope = "layerwise"
    per_layer: Literal["auto", "uniform"] = "auto"
    attention_unit: AttentionUnit = "auto"
    keep_first: int = 0
    keep_last: int = 0
    attn_share: Optional[float] = None
    layer_ramp: float = 0.0
    round_to: int = 1
    prune_attention: bool = True
    bias_compensation: bool = False
    num_samples: int = 10
    sample_len: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        check_fraction("target_ratio", self.target_ratio)
        check_choice("ratio_basis", self.ratio_basis, ("total", "prunable"))
        check_choice("metric", self.metric, metric_names())
        check_choice("reducer", self.reducer, REDUCERS)
        check_choice("scope", self.scope, ("layerwise", "global"))
        check_choice("per_layer", self.per_layer, ("auto", "uniform"))
        check_choice("attention_unit", self.attention_unit, ("auto", "kv_group", "query_head"))
        _non_negative("keep_first", self.keep_first)
        _non_negative("keep_last", self.keep_last)
        if self.attn_share is not None:
            check_fraction("attn_share", self.attn_share, closed_low=True)
        if not -2 <= self.layer_ramp <= 2:
            raise ConfigError("layer_ramp", self.layer_ramp, "a slope in [-2, 2]")
        _positive("round_to", self.round_to)
        _positive("num_samples", self.num_samples)
        if self.sample_len < 8:
            raise ConfigError("sample_len", self.sample_len, "at least 8 tokens")
        if self.per_layer == "uniform" and (self.keep_first or self.keep_last or self.layer_ramp or self.scope == "global"):
            raise ConfigError("per_layer", "uniform", "no keep_first/keep_last, no layer_ramp and scope='layerwise'",
                              hint="uniform shapes need every layer pruned alike; drop per_layer='uniform' to keep layers whole")


@dataclass
class SearchConfig:
    """The Bayesian search over the pruning solution space (AdaPruner).

    Args:
        trials: candidates evaluated (0: no search, the PruningConfig is used as it is).
        init_points: random candidates before the optimiser takes over.
        engine: ``"gp"`` (bayesian-optimization's Gaussian process), ``"tpe"`` (optuna, the paper's BO-TPE,
            extra ``[tpe]``) or ``"random"``.
        acquisition: ``"ucb"``, ``"ei"`` or ``"poi"`` (gp engine).
        score_transform: ``"copula"`` (default: the GP sees normal quantiles of the scores' ranks, robust
            to collapsed candidates with huge perplexity) or ``"none"`` (raw negative log perplexity).
        time_budget_s: stop starting new trials after this many seconds (None: no limit).
        metrics: metrics the search may pick.
        reducers: reducers the search may pick.
        pool_size: calibration pool size N (candidate samples).
        subset_size: samples per candidate k; ``search_subset_size`` lets the search pick k in [2, 2k].
        subset_dims: coordinates encoding the subset: samples are embedded by PCA of their cached gradient
            statistics and a candidate takes the k samples nearest to a searched point (similar points give
            overlapping subsets, which a GP can model, unlike N independent bits or one seed integer).
        search_keep_layers: search how many first/last layers stay whole (up to max_keep_first/last).
        search_layer_ramp: search the per-layer ratio slope in [-1, 1].
        search_attn_share: search the share of attention in the removed parameters in [0, 0.6].
        search_scope: search layerwise vs global selection.
        search_bias_compensation: search whether FLAP's bias compensation is applied (trials score it under
            masks; see :class:`PruningConfig`).
        objective_windows: held-apart windows scoring each candidate (negative log perplexity).
        objective_seq_len: tokens per objective window.
        failure_penalty: score registered for a failed (NaN/inf/OOM) trial, below the worst finite score.
        max_failures: consecutive failed trials that stop the search with a summary.
        trace_path: JSONL file each finished trial is appended to; an existing file resumes the search.
    """

    trials: int = 16
    init_points: int = 5
    engine: Literal["gp", "tpe", "random"] = "gp"
    acquisition: Literal["ucb", "ei", "poi"] = "ei"
    score_transform: Literal["copula", "none"] = "copula"
    time_budget_s: Optional[float] = None
    metrics: list[str] = field(default_factory=lambda: ["taylor", "taylor_vector", "wanda_sp", "flap", "magnitude_l2"])
    reducers: list[str] = field(default_factory=lambda: ["sum", "mean", "max", "first"])
    pool_size: int = 64
    subset_size: int = 10
    search_subset_size: bool = False
    subset_dims: int = 2
    search_keep_layers: bool = True
    max_keep_first: int = 4
    max_keep_last: int = 2
    search_layer_ramp: bool = True
    search_attn_share: bool = False
    search_scope: bool = False
    search_bias_compensation: bool = True
    objective_windows: int = 8
    objective_seq_len: int = 256
    failure_penalty: float = 1.0
    max_failures: int = 5
    trace_path: Optional[str] = None

    def __post_init__(self) -> None:
        _non_negative("trials", self.trials)
        _non_negative("init_points", self.init_points)
        check_choice("engine", self.engine, ("gp", "tpe", "random"))
        check_choice("acquisition", self.acquisition, ("ucb", "ei", "poi"))
        check_choice("score_transform", self.score_transform, ("copula", "none"))
        if not self.metrics:
            raise ConfigError("metrics", self.metrics, f"a non-empty list drawn from {metric_names()}")
        for name in self.metrics:
            check_choice("metrics[]", name, metric_names())
        if not self.reducers:
            raise ConfigError("reducers", self.reducers, f"a non-empty list drawn from {sorted(REDUCERS)}")
        for name in self.reducers:
            check_choice("reducers[]", name, REDUCERS)
        _positive("pool_size", self.pool_size)
        _positive("subset_size", self.subset_size)
        if self.subset_size > self.pool_size:
            raise ConfigError("subset_size", self.subset_size, f"at most pool_size={self.pool_size}",
                              hint="lower subset_size or enlarge the calibration pool")
        _positive("subset_dims", self.subset_dims)
        _positive("objective_windows", self.objective_windows)
        _positive("max_failures", self.max_failures)
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ConfigError("time_budget_s", self.time_budget_s, "a positive number of seconds or None")
        if self.engine == "tpe":
            try:
                import optuna  # noqa: F401
            except ImportError as exc:
                raise ConfigError("engine", "tpe", "an installed optuna", hint="pip install 'adapruner-lightning[tpe]'") from exc
