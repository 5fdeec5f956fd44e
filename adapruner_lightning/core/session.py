"""The pruning session on a plain HF causal LM (no search, no Lightning): score a candidate cheaply.

:class:`PruningSession` holds the model, its structures, the calibration pool and its cached per-sample
statistics; :meth:`PruningSession.select` turns a :class:`Candidate` (metric, reducer, samples, layer
schedule) into a selection and :meth:`PruningSession.score` scores it under reversible masks.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from adapruner_lightning.core.architectures import get_architecture, head_layout
from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.groups import (
    LayerStructure,
    layer_structures,
    prunable_params,
    resolve_attention_unit,
    total_params,
)
from adapruner_lightning.core.importance import (
    MemberScores,
    MetricSpec,
    ScoreInputs,
    UnitScores,
    get_metric,
    metric_names,
    score_members,
    standardized_unit_scores,
    unit_scores,
)
from adapruner_lightning.core.masking import masked
from adapruner_lightning.core.objective import OBJECTIVES, DenseReference, dense_reference, kl_from_reference
from adapruner_lightning.core.physical import compensation_biases, make_plan
from adapruner_lightning.core.plan import PruningPlan
from adapruner_lightning.core.reconstruction import (
    RECONSTRUCTIONS,
    Fits,
    GramCache,
    LeastSquares,
    collect_grams,
    legacy_reconstruction,
)
from adapruner_lightning.core.selection import (
    LayerSelection,
    SelectionOptions,
    pruned_layer_range,
    removable_params,
    select_groups,
)
from adapruner_lightning.core.stats import StatsCache, collect_activation_stats, collect_gradient_scores
from adapruner_lightning.distributed import LOCAL, Collective
from adapruner_lightning.config import check_choice, check_positive, renamed
from adapruner_lightning.errors import ConfigError

#: Subsets whose gradient-metric scores stay cached (score vectors only: about 4 x (3 H + I) floats per layer).
GRADIENT_CACHE_SUBSETS = 64
#: PruningConfig fields that change memory, not the problem: left out of :meth:`PruningSession.problem`, so a
#: search trace resumes under another value (batches differ only in float rounding).
MEMORY_KNOBS = ("backward_batch_tokens",)


def plan_options(config: PruningConfig) -> dict[str, Any]:
    """Every pruning option a plan depends on, as plain data: ``config`` without its :data:`MEMORY_KNOBS`."""
    return {k: v for k, v in asdict(config).items() if k not in MEMORY_KNOBS}

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One point of the solution space: which samples, which metric and reducer, which layer schedule."""

    metric: str
    reducer: str
    subset: list[int]
    keep_first: int = 0
    keep_last: int = 0
    layer_ramp: float = 0.0
    attn_share: float | None = None
    scope: str = "layerwise"
    reconstruction: str = "none"
    bias_compensation: bool | None = None  # deprecated: True is reconstruction="bias"

    def __post_init__(self) -> None:
        self.reconstruction = legacy_reconstruction(self.bias_compensation, self.reconstruction, "Candidate")
        self.bias_compensation = None
        check_choice("reconstruction", self.reconstruction, RECONSTRUCTIONS)

    def describe(self) -> dict[str, Any]:
        """Plain-data description (for traces and plan provenance; ``bias_compensation`` is kept for readers of
        plans written before ``reconstruction``: whether FLAP's bias is the reconstruction)."""
        return {"metric": self.metric, "reducer": self.reducer, "subset": list(self.subset),
                "keep_first": self.keep_first, "keep_last": self.keep_last, "layer_ramp": self.layer_ramp,
                "attn_share": self.attn_share, "scope": self.scope, "reconstruction": self.reconstruction,
                "bias_compensation": self.reconstruction == "bias"}




def check_model(model: nn.Module, *, needs_gradients: bool) -> None:
    """Fail fast on models that cannot be pruned (unknown family, quantized weights, no gradients).

    The model is never changed: a bf16/fp16 model keeps its dtype (on every rank alike); the statistics
    passes accumulate in float32 whatever the weights' precision.
    """
    get_architecture(model)
    if getattr(model, "hf_quantizer", None) is not None or getattr(model.config, "quantization_config", None):
        raise ConfigError("model", type(model).__name__, "a de-quantized float model",
                          hint="load the model in float32/bfloat16 (a GGUF is de-quantized by adapruner's loader)")
    if needs_gradients and any(not p.is_floating_point() for p in model.parameters()):
        raise ConfigError("model parameters", "integer/quantized", "floating-point parameters for gradient metrics",
                          hint="use an activation or magnitude metric, or load the model in float precision")


class PruningSession:
    """Everything needed to score pruning candidates on one model, with statistics computed once.

    Args:
        model: a supported HF causal LM (pruned in place only by :meth:`apply`).
        config: the pruning configuration (target, basis, schedule defaults).
        pool: calibration pool, LongTensor ``[N, T]``.
        objective_windows: held-apart windows ``[M, T']`` that score candidates (may be None without a search).
        pool_ids: stable ids of the pool's samples (recorded in plans and traces).
        batch_size: batch size of objective evaluation, and at most that of the statistics and gradient passes
            (which hold at most ``config.backward_batch_tokens`` tokens a batch).
        progress: show progress bars.
        stats: the pool's statistics from another session on the same weights and pool (they depend on
            neither the metric, the seed nor the target), so several configurations pay for one pass.
        collective: the ranks of a distributed job, each holding this model and pool: the statistics pass is
            split between them (every rank ends with the complete statistics).
        grams: the least-squares statistics from another session on the same weights, pool and
            ``reconstruction_windows``, as ``stats``.
        reconstruction_windows: more calibration windows ``[K, T'']`` (disjoint from the objective windows) that
            the least-squares statistics sum over beside the pool (the ``obs`` metric reads those statistics; no
            other unit score reads the windows; None: the pool alone).
        objective: deprecated name of ``objective_windows`` (a :class:`DeprecationWarning`).
    """

    def __init__(self, model: nn.Module, config: PruningConfig, pool: torch.Tensor, *,
                 objective_windows: torch.Tensor | None = None, pool_ids: Sequence[str] | None = None,
                 batch_size: int = 8, progress: bool = True, stats: StatsCache | None = None,
                 collective: Collective = LOCAL, grams: GramCache | None = None,
                 reconstruction_windows: torch.Tensor | None = None, objective: torch.Tensor | None = None) -> None:
        self.model, self.config, self.collective = model, config, collective
        self.pool = pool
        self.reconstruction_windows = reconstruction_windows if reconstruction_windows is not None and \
            reconstruction_windows.numel() else None
        self.objective_windows = renamed("PruningSession(objective=...)", objective, "objective_windows=...",
                                         objective_windows)
        self.pool_ids = list(pool_ids or [str(i) for i in range(pool.shape[0])])
        self.batch_size, self.progress = batch_size, progress
        self.backward_batch = max(1, min(batch_size, config.backward_batch_tokens // max(1, pool.shape[1])))
        self.layers = layer_structures(model)
        self.uniform = config.per_layer == "uniform" or not get_architecture(model).per_layer_heads
        if self.uniform:
            self._check_uniform(self._config_candidate([]))
        self.attention_unit = resolve_attention_unit(config.attention_unit, model.config)
        self.params_total = total_params(model)
        basis = self.params_total if config.ratio_basis == "total" else prunable_params(self.layers)
        self.budget = int(round(config.target_ratio * basis))
        self._stats = self._check_stats(stats)
        tokens = pool.numel() + (self.reconstruction_windows.numel() if self.reconstruction_windows is not None else 0)
        if grams is not None and (len(grams.layers) != len(self.layers) or grams.tokens != tokens):
            raise ConfigError("grams", f"{grams.tokens} tokens x {len(grams.layers)} layers",
                              f"the Gram matrices of this pool and these reconstruction windows ({tokens} tokens) and "
                              f"these {len(self.layers)} layers", hint="share grams only between sessions on the same "
                              "dense weights, pool and reconstruction windows")
        self._grams: GramCache | None = grams
        self._grad_cache: dict[tuple, list[dict[str, torch.Tensor]]] = {}
        self._pool_scores: dict[tuple[str, int], MemberScores] = {}  # (metric, layer) -> scores of a `grams` metric
        self.objective_kind, self.kl_top_k = "perplexity", 64
        self._reference: DenseReference | None = None

    def _check_stats(self, stats: StatsCache | None) -> StatsCache | None:
        """``stats`` if it describes this pool (same sample ids) and this model's layer count, else a clear error."""
        if stats is not None and (stats.sample_ids != self.pool_ids or stats.num_samples != self.pool.shape[0]
                                  or len(stats.layers) != len(self.layers)):
            raise ConfigError("stats", f"{stats.num_samples} samples x {len(stats.layers)} layers",
                              f"statistics of this pool ({len(self.pool_ids)} samples, same ids) and these "
                              f"{len(self.layers)} layers", hint="share stats only between sessions on the same "
                              "dense weights and calibration pool")
        return stats

    @property
    def stats(self) -> StatsCache:
        """Per-sample activation statistics of the pool (computed on first use, then cached)."""
        if self._stats is None:
            self._stats = collect_activation_stats(self.model, self.layers, self.pool, batch_size=self.backward_batch,
                                                   sample_ids=self.pool_ids, progress=self.progress,
                                                   collective=self.collective)
        return self._stats

    def _gradient_scores(self, subset: list[int], spec: MetricSpec) -> list[dict[str, torch.Tensor]]:
        """Per layer, ``spec``'s member scores over ``subset``: one gradient pass per new subset and order, which
        scores every gradient metric of that order at once; only score vectors are cached (kilobytes per layer)."""
        key = (tuple(sorted(subset)), spec.second_order)
        if key not in self._grad_cache:
            if len(self._grad_cache) >= GRADIENT_CACHE_SUBSETS:
                self._grad_cache.pop(next(iter(self._grad_cache)))
            specs = [get_metric(name) for name in metric_names()]
            specs = [s for s in specs if s.needs == "gradients" and s.second_order == spec.second_order]
            samples = self.pool[torch.as_tensor(sorted(subset))]
            self._grad_cache[key] = collect_gradient_scores(self.model, self.layers, samples, specs,
                                                            batch_size=self.backward_batch)
        return [layer[spec.name] for layer in self._grad_cache[key]]

    def unit_scores(self, candidate: Candidate) -> dict[int, UnitScores]:
        """Scores of every unit of every pruned layer under ``candidate``'s metric, reducer and samples."""
        spec = get_metric(candidate.metric)
        indices = pruned_layer_range(len(self.layers), candidate.keep_first, candidate.keep_last)
        activation = self.stats.reduce(candidate.subset) if spec.needs == "activations" else None
        gradients = self._gradient_scores(candidate.subset, spec) if spec.needs == "gradients" else None
        grams = self.grams if spec.needs == "grams" else None
        out = {}
        for i in indices:
            inputs = ScoreInputs(layer=self.layers[i], activation_stats=activation[i] if activation else {},
                                 gradient_stats=gradients[i] if gradients else {},
                                 generator=torch.Generator().manual_seed(self.config.seed * 1000 + i),
                                 grams=grams.layers[i] if grams else {}, gram_tokens=grams.tokens if grams else 0,
                                 damping=self.config.reconstruction_damping)
            members = self._pool_member_scores(spec, inputs) if grams else score_members(spec, inputs)
            scores = (standardized_unit_scores(self.layers[i], members) if candidate.scope == "standardized"
                      else unit_scores(self.layers[i], members, candidate.reducer))
            out[i] = scores.cpu()
        return out

    def _pool_member_scores(self, spec: MetricSpec, inputs: ScoreInputs) -> MemberScores:
        """The member scores of a metric that reads the pool's Grams (``obs``): they depend on neither the samples
        nor the schedule of a candidate, so each layer's are computed once per session."""
        key = (spec.name, inputs.layer.index)
        if key not in self._pool_scores:
            self._pool_scores[key] = score_members(spec, inputs)
        return self._pool_scores[key]

    def _check_uniform(self, candidate: Candidate) -> None:
        if candidate.keep_first or candidate.keep_last or candidate.layer_ramp or candidate.scope != "layerwise":
            family = get_architecture(self.model).name
            raise ConfigError("layer schedule", {k: v for k, v in candidate.describe().items() if k in
                                                 ("keep_first", "keep_last", "layer_ramp", "scope")},
                              f"every layer pruned alike (per_layer='uniform'{'' if self.config.per_layer == 'uniform' else f', required by {family}'})",
                              hint="drop keep_first/keep_last/layer_ramp and use scope='layerwise'")

    def check_reachable(self, keep_first: int, keep_last: int, *, searched: bool = False) -> None:
        """Refuse a target that no selection keeping ``keep_first``/``keep_last`` layers whole can reach, before any
        statistics pass or trial (the most removable: every other layer down to one KV group or query head per
        group and ``round_to`` MLP channels). ``searched``: these are the fewest any candidate of a search space
        keeps, so no candidate can reach it (the message says so).

        Raises:
            ConfigError: the target is above that; the hint names ``ratio_basis='prunable'`` (``--ratio-basis
                prunable``) when the basis is the total, whose embeddings are never pruned.
        """
        c = self.config
        indices = pruned_layer_range(len(self.layers), keep_first, keep_last)
        capacity = removable_params(self.layers, indices, attention_unit=self.attention_unit, round_to=c.round_to,
                                    prune_attention=c.prune_attention)
        if self.budget <= capacity:
            return
        basis = self.params_total if c.ratio_basis == "total" else prunable_params(self.layers)
        who = "any candidate of the search space" if searched else "this configuration"
        hint = (f"lower target_ratio to at most {capacity / basis:.3f}, keep fewer layers whole or lower round_to")
        if c.ratio_basis == "total":
            fixed = self.params_total - prunable_params(self.layers)
            hint = (f"pass --ratio-basis prunable (ratio_basis='prunable': the ratio counts the decoder projections "
                    f"only; the embeddings and other unpruned tensors hold {fixed:,} of the {basis:,} parameters) or "
                    + hint)
        raise ConfigError("target_ratio", c.target_ratio,
                          f"at most {capacity / basis:.3f} of the {c.ratio_basis} parameters: {who} can remove "
                          f"{capacity:,} removable parameters (layers {indices.start}-{indices.stop - 1} each keep one "
                          f"attention unit and {c.round_to} MLP channel(s))", hint=hint)

    def select(self, candidate: Candidate) -> dict[int, LayerSelection]:
        """The groups ``candidate`` removes to meet the budget (an unreachable target is refused before scoring)."""
        if self.uniform:
            self._check_uniform(candidate)
        self.check_reachable(candidate.keep_first, candidate.keep_last)
        opts = SelectionOptions(
            budget=self.budget, scope=candidate.scope, attention_unit=self.attention_unit,
            keep_first=candidate.keep_first, keep_last=candidate.keep_last, attn_share=candidate.attn_share,
            layer_ramp=candidate.layer_ramp, round_to=self.config.round_to, prune_attention=self.config.prune_attention,
            uniform=self.uniform,
        )
        return select_groups(self.layers, self.unit_scores(candidate), opts)

    @property
    def grams(self) -> GramCache:
        """The least-squares statistics of the pool and the reconstruction windows (``sum x x^T`` of every o/down
        input; computed on first use)."""
        if self._grams is None:
            self._grams = collect_grams(self.model, self.layers, self.pool, extra=self.reconstruction_windows,
                                        batch_size=self.batch_size,
                                        progress=self.progress, collective=self.collective)
        return self._grams

    @property
    def least_squares(self) -> LeastSquares:
        """The least-squares reconstruction of this pool, with the configured damping."""
        return LeastSquares(self.grams, damping=self.config.reconstruction_damping)

    def compensation(self, candidate: Candidate, selection: dict[int, LayerSelection]) -> dict | Fits | None:
        """What ``candidate``'s reconstruction adds to ``selection``: None (``none``), FLAP's biases from the
        candidate's samples (``bias``), or the least-squares :class:`~adapruner_lightning.core.reconstruction.Fits`
        of the kept columns on the whole pool (``lstsq``)."""
        if candidate.reconstruction == "bias":
            return compensation_biases(self.layers, selection, self.stats.reduce(candidate.subset))
        if candidate.reconstruction == "lstsq":
            return self.least_squares.fit(self.layers, selection)
        return None

    def compensation_key(self, candidate: Candidate) -> tuple | None:
        """What the reconstruction of ``candidate``'s plan reads besides its selection, as plain data (None: no
        reconstruction), so that :meth:`digest` tells its plans apart. FLAP's bias adds the mean activations of the
        candidate's samples, so its key names them; the least-squares fit reads the whole pool (and the damping)."""
        if candidate.reconstruction == "bias":
            return ("bias", sorted(candidate.subset))
        if candidate.reconstruction == "lstsq":
            return ("lstsq", self.config.reconstruction_damping)
        return None

    def digest(self, candidate: Candidate, selection: dict[int, LayerSelection]) -> str:
        """A short hash of what ``candidate``'s score depends on: the units its ``selection`` removes per layer and
        its :meth:`compensation_key`. Equal digests, equal scores on this session (metric, reducer and schedule act
        only through the selection), so a search scores each digest once."""
        removed = [[i, sel.heads, sel.kv_heads, sel.channels] for i, sel in sorted(selection.items())
                   if sel.heads or sel.kv_heads or sel.channels]
        payload = json.dumps({"removed": removed, "compensation": self.compensation_key(candidate)})
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @torch.no_grad()
    def score(self, selection: dict[int, LayerSelection], compensation: dict | Fits | None = None) -> float:
        """The masked model's score (with :meth:`compensation` ``compensation``) on the objective windows, higher is
        better: negative log perplexity, or with :meth:`set_objective` ``("kl")`` the negative mean KL divergence
        from the dense model."""
        self._reference_ready()
        with masked(self.layers, selection, compensation):
            return self.score_model(self.model)

    @torch.no_grad()
    def score_model(self, model: nn.Module) -> float:
        """``model``'s score on the objective windows as :meth:`score` computes it (``model``: this session's model
        under masks, or a physically pruned copy of it, e.g. after a few training steps)."""
        from adapruner_lightning.evaluation.metrics import evaluate_perplexity

        self._reference_ready()
        if self.objective_kind == "kl":
            kl = kl_from_reference(model, self.objective_windows, self._reference, batch_size=self.batch_size)
            return -kl if math.isfinite(kl) else float("nan")
        ppl = evaluate_perplexity(model, self.objective_windows, batch_size=self.batch_size, progress=False)
        return -math.log(ppl) if math.isfinite(ppl) and ppl > 0 else float("nan")

    def _reference_ready(self) -> None:
        """Check the objective windows exist; for the KL objective, compute the dense distributions once, before
        any mask (the session's model is dense between candidates)."""
        if self.objective_windows is None:
            raise ConfigError("objective windows", None, "held-apart token windows to score candidates",
                              hint="pass objective_windows=... (disjoint from calibration and evaluation text)")
        if self.objective_kind == "kl" and self._reference is None:
            self._reference = dense_reference(self.model, self.objective_windows, top_k=self.kl_top_k,
                                              batch_size=self.batch_size)

    def set_objective(self, kind: str = "perplexity", top_k: int = 64) -> None:
        """Score candidates by ``kind``: ``"perplexity"`` (negative log perplexity of the objective windows) or
        ``"kl"`` (negative mean KL divergence from the dense model on them, over its ``top_k`` tokens and the rest;
        :mod:`adapruner_lightning.core.objective`). Higher is better for both."""
        check_choice("objective", kind, OBJECTIVES)
        check_positive("kl_top_k", top_k)
        if (kind, top_k) != (self.objective_kind, self.kl_top_k):
            self.objective_kind, self.kl_top_k, self._reference = kind, top_k, None

    def default_candidate(self) -> Candidate:
        """The configured metric/reducer/schedule with ``num_samples`` seeded random samples (no search)."""
        k = min(self.config.num_samples, self.pool.shape[0])
        gen = torch.Generator().manual_seed(self.config.seed)
        return self._config_candidate(sorted(torch.randperm(self.pool.shape[0], generator=gen)[:k].tolist()))

    def _config_candidate(self, subset: list[int]) -> Candidate:
        c = self.config
        return Candidate(c.metric, c.reducer, subset, c.keep_first, c.keep_last, c.layer_ramp, c.attn_share, c.scope,
                         c.reconstruction)

    def plan(self, candidate: Candidate, selection: dict[int, LayerSelection] | None = None,
             **provenance: Any) -> PruningPlan:
        """A :class:`PruningPlan` for ``candidate`` with its provenance (samples, metric, seed ...)."""
        selection = selection if selection is not None else self.select(candidate)
        info = {**candidate.describe(), "sample_ids": [self.pool_ids[i] for i in candidate.subset],
                "seed": self.config.seed, "attention_unit": self.attention_unit, **provenance}
        compensation = self.compensation(candidate, selection)
        biases = compensation.biases(self.layers) if isinstance(compensation, Fits) else compensation
        if isinstance(compensation, Fits):  # what a replay needs to fit the same weights again
            gram = "pool" if self.reconstruction_windows is None else "pool + reconstruction windows"
            info["reconstruction_fit"] = {**self.least_squares.describe(), "gram": gram,
                                          "pool": tensor_digest(self.pool), **self._windows_digest()}
        return make_plan(self.model, selection, target_ratio=self.config.target_ratio,
                         ratio_basis=self.config.ratio_basis, provenance=info, biases=biases)

    def problem(self) -> dict[str, Any]:
        """What this session's scores depend on, as plain data: the model (geometry, parameter count and a weight
        fingerprint), the pool and objective windows' tokens, and every pruning option. Two sessions with equal problems
        score every candidate alike; a search trace records it, so a trace of another problem is refused."""
        layout = head_layout(self.model.config)
        return {
            "model": {"type": self.model.config.model_type, "layers": layout.num_layers, "hidden": layout.hidden_size,
                      "heads": layout.num_heads, "kv_heads": layout.num_kv_heads, "mlp": layout.intermediate_size,
                      "params": self.params_total, "fingerprint": weight_fingerprint(self.layers, self.model)},
            "pool": {**_tokens_record(self.pool), "ids": self.pool_ids},
            "objective_windows": None if self.objective_windows is None else _tokens_record(self.objective_windows),
            "pruning": plan_options(self.config),
            "attention_unit": self.attention_unit, "uniform": self.uniform, **self._windows_digest(),
        }

    def _windows_digest(self) -> dict[str, Any]:
        """The reconstruction windows' shape and tokens as ``{"reconstruction_windows": ...}`` (empty without
        them, so a problem or plan made before they existed reads the same)."""
        if self.reconstruction_windows is None:
            return {}
        return {"reconstruction_windows": _tokens_record(self.reconstruction_windows)}

    def free_memory(self) -> None:
        """Drop what a failed trial may have left: weight gradients, then unreferenced (CUDA-cached) memory."""
        for param in self.model.parameters():
            param.grad = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def release(self) -> None:
        """Drop cached statistics and the dense reference (frees memory before fine-tuning; a
        :attr:`least_squares` taken before keeps its statistics)."""
        self._stats, self._grad_cache, self._reference, self._grams, self._pool_scores = None, {}, None, None, {}


def tensor_digest(tensor: torch.Tensor) -> str:
    """A short hash of a tensor's values (token ids: exact)."""
    data = tensor.detach().cpu().contiguous()
    return hashlib.sha256(f"{data.dtype}{list(data.shape)}".encode() + data.numpy().tobytes()).hexdigest()[:16]


def _tokens_record(tensor: torch.Tensor) -> dict[str, Any]:
    """A batch of token windows as plain data: its shape and :func:`tensor_digest`."""
    return {"shape": list(tensor.shape), "tokens": tensor_digest(tensor)}


def weight_fingerprint(layers: list[LayerStructure], model: nn.Module, per_tensor: int = 256) -> str:
    """A cheap fingerprint of the weights: sums of ``per_tensor`` evenly strided entries of the embedding and of
    every prunable projection, taken on the CPU in float64 (the same on every rank and device for the same
    weights; costs one tiny copy per tensor, nothing weight-sized)."""
    tensors = [model.get_input_embeddings().weight]
    tensors += [getattr(layer, m).weight for layer in layers for m in ("q", "k", "v", "o", "gate", "up", "down")]
    sums = []
    for weight in tensors:
        flat = weight.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // per_tensor)][:per_tensor].to("cpu", torch.float64)
        sums.append(f"{float(sample.sum()):.9e}/{float(sample.square().sum()):.9e}")
    return hashlib.sha256("|".join(sums).encode()).hexdigest()[:16]
