"""PruningConfig: how much to prune and how one candidate is scored and selected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from adapruner_lightning.config import check_choice, check_fraction, check_literal, check_non_negative, check_positive
from adapruner_lightning.core.groups import AttentionUnit
from adapruner_lightning.core.importance import REDUCERS, metric_names
from adapruner_lightning.core.reconstruction import (
    DEFAULT_DAMPING,
    Reconstruction,
    check_reconstruction,
    legacy_reconstruction,
)
from adapruner_lightning.errors import ConfigError

#: how the removed groups are chosen across layers
Scope = Literal["layerwise", "global", "standardized"]
#: what ``target_ratio`` is a fraction of
RatioBasis = Literal["total", "prunable"]
#: ``uniform`` forces identical layer shapes
PerLayer = Literal["auto", "uniform"]


@dataclass
class PruningConfig:
    """How much to prune and how one candidate is scored and selected.

    Args:
        target_ratio: fraction of parameters to remove, in (0, 1).
        ratio_basis: ``"total"`` (all parameters, embeddings included) or ``"prunable"`` (decoder projections).
        metric: importance metric name (see ``importance.metric_names()``).
        reducer: how a coupled group's member scores combine: sum, mean, max, prod, first.
        scope: ``"layerwise"`` (same share per pruned layer, LLM-Pruner style), ``"global"`` ranking, or
            ``"standardized"`` (FLAP's adaptive structure: per-layer z-scores, one global threshold).
        per_layer: ``"uniform"`` forces identical layer shapes (plain ``from_pretrained`` reloads the export).
        attention_unit: ``"kv_group"``, ``"query_head"`` (uniform within KV groups) or ``"auto"``.
        keep_first: leading layers kept whole (LLM-Pruner keeps 4 of 32).
        keep_last: trailing layers kept whole (LLM-Pruner keeps 2 of 32).
        attn_share: fraction of the removed parameters taken from attention (None: by importance / same ratio).
        layer_ramp: per-layer ratio slope in [-2, 2]; > 0 prunes later layers more.
        round_to: MLP widths stay multiples of this (8/64 for efficient kernels).
        prune_attention: whether attention may lose units at all.
        reconstruction: what makes up for the removed ``o_proj`` / ``down_proj`` input channels
            (:mod:`~adapruner_lightning.core.reconstruction`): ``"none"``; ``"bias"``, FLAP's bias compensation (their
            mean contribution over the candidate's calibration samples becomes a bias); ``"lstsq"``, the kept
            columns re-fitted in least squares (with a bias) to the dense layer's output on the whole calibration
            pool. Biases and re-fitted weights are scored under masks as exported; exports with biases reload with
            ``load_pruned``. ``SearchConfig.space.reconstruction`` lets the search choose.
        reconstruction_damping: ``lstsq``'s ridge term, a fraction of the mean diagonal of the kept inputs'
            covariance (in (0, 10]).
        bias_compensation: deprecated: ``True`` is ``reconstruction="bias"``.
        num_samples: calibration samples a candidate reads for the importance: the configured candidate's, and
            every candidate's while the search does not vary the count (``search.space.vary_num_samples`` off);
            at most the pool's size is used.
        sample_len: tokens per calibration sample.
        backward_batch_tokens: tokens per batch of the search's backward passes (the statistics pass and the
            element-wise gradient pass), whose saved activations grow with the batch: a batch holds
            ``max(1, backward_batch_tokens // sample_len)`` samples, at most the session's batch size (8). The
            default keeps 8 samples of 128 tokens (a 7-8B model's search stays within ~0.45x its bf16 weights on
            the GPU); longer samples go through fewer at a time. The forward-only objective is not affected.
        seed: seed for sample choice, random metric and search.
    """

    target_ratio: float = 0.2
    ratio_basis: RatioBasis = "total"
    metric: str = "taylor"
    reducer: str = "sum"
    scope: Scope = "layerwise"
    per_layer: PerLayer = "auto"
    attention_unit: AttentionUnit = "auto"
    keep_first: int = 0
    keep_last: int = 0
    attn_share: Optional[float] = None
    layer_ramp: float = 0.0
    round_to: int = 1
    prune_attention: bool = True
    reconstruction: Reconstruction = "none"
    reconstruction_damping: float = DEFAULT_DAMPING
    bias_compensation: Optional[bool] = None
    num_samples: int = 10
    sample_len: int = 128
    backward_batch_tokens: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        check_fraction("target_ratio", self.target_ratio)
        check_literal("ratio_basis", self.ratio_basis, RatioBasis)
        check_choice("metric", self.metric, metric_names())
        check_choice("reducer", self.reducer, REDUCERS)
        check_literal("scope", self.scope, Scope)
        if self.scope == "standardized" and self.layer_ramp:
            raise ConfigError("layer_ramp", self.layer_ramp, "0 with scope='standardized'",
                              hint="FLAP's adaptive structure sets every layer's share itself; use scope='layerwise'")
        check_literal("per_layer", self.per_layer, PerLayer)
        check_literal("attention_unit", self.attention_unit, AttentionUnit)
        check_non_negative("keep_first", self.keep_first)
        check_non_negative("keep_last", self.keep_last)
        if self.attn_share is not None:
            check_fraction("attn_share", self.attn_share, closed_low=True)
        if not -2 <= self.layer_ramp <= 2:
            raise ConfigError("layer_ramp", self.layer_ramp, "a slope in [-2, 2]")
        self.reconstruction = legacy_reconstruction(self.bias_compensation, self.reconstruction, "PruningConfig")
        self.bias_compensation = None
        check_reconstruction(self.reconstruction, self.reconstruction_damping)
        check_positive("round_to", self.round_to)
        check_positive("num_samples", self.num_samples)
        if self.sample_len < 8:
            raise ConfigError("sample_len", self.sample_len, "at least 8 tokens")
        check_positive("backward_batch_tokens", self.backward_batch_tokens)
        if self.per_layer == "uniform" and (self.keep_first or self.keep_last or self.layer_ramp or self.scope != "layerwise"):
            raise ConfigError("per_layer", "uniform", "no keep_first/keep_last, no layer_ramp and scope='layerwise'",
                              hint="uniform shapes need every layer pruned alike; drop per_layer='uniform' to keep layers whole")
