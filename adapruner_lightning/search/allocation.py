"""The per-layer allocation stage: after the Bayesian search, an evolutionary search over how much each layer loses.

The Bayesian search picks how units are scored (metric, reducer, calibration samples, scope, reconstruction) and a
coarse schedule (keep_first, keep_last, one ramp). This stage keeps the best candidate's scoring and searches the
per-layer counts with many degrees of freedom: attention units and MLP channels of every layer apart, always on
the global parameter budget (within one MLP block, as every selection), each layer losing its lowest-scoring units.

The engine is EvoPress's (Sieberling et al., 2024): a (1 + lambda) evolution whose offspring are the parent after a
few *level switches*, each moving removal from one layer to another at equal cost (``mlp_step`` of an MLP's width,
or one attention unit), or trading one attention unit for the MLP channels of the same parameter count; the fitness
is the KL divergence from the dense model on the objective windows (:mod:`adapruner_lightning.core.objective`), and
selection is multi-fidelity: every offspring is scored on ``low_windows`` windows, the ``survivors`` best on all of
them, and the parent is replaced only by an offspring that beats it there. The first parent is the better of the
search's best selection and FLAP's allocation (its per-layer counts, filled with this candidate's ranking).

With ``block_removal`` a layer may lose a whole block, as EvoPress, DarwinLM and Minitron allow: a *block* switch
removes one layer's whole attention (every query and KV head), or the whole MLP of a layer without attention, or
gives one attention unit back (the fill then trims that layer's MLP back to a width it may keep), and the unit
switches may go down to zero. Only layers llama.cpp's ``deci`` runs as transformers does are proposed: an MLP goes
whole only where the attention is gone (deci skips a layer without MLP, attention included), never in the last
layer (deci selects the output rows inside its MLP path), and layer 0 keeps its attention (llama.cpp reads the
head size only from a first layer with heads; so some layer always keeps attention). A removed
block gets no reconstruction (:meth:`~adapruner_lightning.core.selection.LayerSelection.removes_block_of`).

On several ranks every rank scores its share of each stage's offspring; the scores are gathered, so every rank
draws the same next generation and ends with the same counts (the unit ranking is rank 0's, broadcast once). A
collective waits for one stage's share of evaluations: at most ``offspring / world_size`` low-fidelity scores.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import numpy as np

from adapruner_lightning.config import check_positive
from adapruner_lightning.core.groups import LayerStructure
from adapruner_lightning.core.importance import UnitScores
from adapruner_lightning.core.masking import masked
from adapruner_lightning.core.objective import DenseReference, dense_reference, kl_from_reference
from adapruner_lightning.core.reconstruction import Fits, LayerFit
from adapruner_lightning.core.selection import (
    LayerCounts,
    LayerSelection,
    attention_units,
    counts_cost,
    layer_counts,
    max_counts,
    select_counts,
)
from adapruner_lightning.core.session import Candidate, PruningSession
from adapruner_lightning.distributed import LOCAL, Collective, spread
from adapruner_lightning.errors import ConfigError, SearchInterrupted
from adapruner_lightning.progress import make_progress, progress_enabled
from adapruner_lightning.search.stop import first_stop, stop_reason

log = logging.getLogger(__name__)
Counts = dict[int, LayerCounts]
#: FLAP's reference point (its allocation seeds the evolution)
FLAP_POINT = dict(metric="flap_reference", reducer="sum", scope="standardized")


@dataclass
class AllocationConfig:
    """The per-layer allocation stage (on by default: 16 generations; off while ``generations`` is 0).

    Args:
        generations: rounds of the (1 + lambda) evolution after the Bayesian search (0: no stage).
        offspring: offspring per generation (lambda), each scored on ``low_windows`` objective windows.
        survivors: the best offspring of a generation scored again on every objective window.
        low_windows: objective windows of the cheap first fidelity.
        mlp_step: MLP channels one level switch moves, as a fraction of a layer's width (rounded to ``round_to``).
        max_switches: an offspring is its parent after 1 to ``max_switches`` level switches.
        block_removal: a layer may lose its whole attention, and a layer without attention its whole MLP (see the
            module docstring: never a layer llama.cpp's ``deci`` computes differently); needs per-layer shapes and
            ``prune_attention``.
    """

    generations: int = 16
    offspring: int = 8
    survivors: int = 2
    low_windows: int = 2
    mlp_step: float = 1 / 32
    max_switches: int = 3
    block_removal: bool = False

    def __post_init__(self) -> None:
        if self.generations < 0:
            raise ConfigError("search.allocation.generations", self.generations, "0 (off) or a positive count")
        check_positive("search.allocation.offspring", self.offspring)
        check_positive("search.allocation.low_windows", self.low_windows)
        check_positive("search.allocation.max_switches", self.max_switches)
        if not 1 <= self.survivors <= self.offspring:
            raise ConfigError("search.allocation.survivors", self.survivors, f"in [1, offspring={self.offspring}]")
        if not 0 < self.mlp_step <= 0.5:
            raise ConfigError("search.allocation.mlp_step", self.mlp_step, "a fraction of the MLP width in (0, 0.5]")


@dataclass
class AllocationResult:
    """The refined selection and what the stage did (plan provenance)."""

    selection: dict[int, LayerSelection]
    info: dict[str, Any]


class Budget:
    """Per-layer counts that remove the session's budget: bounds, costs, level switches and the MLP fill."""

    def __init__(self, layers: list[LayerStructure], budget: int, attention_unit: str, round_to: int,
                 prune_attention: bool, mlp_step: float, *, block_removal: bool = False) -> None:
        self.layers, self.budget, self.unit, self.round_to = layers, budget, attention_unit, round_to
        self.maxima = {i: max_counts(layer, attention_unit, round_to) for i, layer in enumerate(layers)}
        if not prune_attention:
            self.maxima = {i: LayerCounts(0, m.channels) for i, m in self.maxima.items()}
        self.whole = block_removal and prune_attention
        self.units = {i: attention_units(layer, attention_unit) for i, layer in enumerate(layers)}
        self.steps = {i: max(round_to, round(mlp_step * layer.intermediate / round_to) * round_to)
                      for i, layer in enumerate(layers)}
        self.block = {i: round_to * layer.channel_cost() for i, layer in enumerate(layers)}

    def attention_max(self, i: int) -> int:
        """The most attention units layer ``i`` may lose (with ``block_removal`` all of them, except in layer 0:
        llama.cpp reads the head size only where layer 0 keeps a head)."""
        return self.units[i] if self.whole and i > 0 else self.maxima[i].attention

    def headless(self, i: int, c: LayerCounts) -> bool:
        """Whether ``c`` removes layer ``i``'s whole attention."""
        return self.whole and c.attention == self.units[i]

    def channel_max(self, i: int, c: LayerCounts) -> int:
        """The most MLP channels layer ``i`` may lose beside ``c.attention``: all of them only in a layer without
        attention that is not the last one (where llama.cpp's ``deci`` runs a layer without MLP as transformers does)."""
        if self.headless(i, c) and i != len(self.layers) - 1:
            return self.layers[i].intermediate
        return self.maxima[i].channels

    def slack(self, counts: Counts) -> int:
        """Parameters still to remove (negative: too many removed)."""
        return self.budget - counts_cost(self.layers, counts, self.unit)

    def feasible(self, counts: Counts) -> bool:
        """Within the bounds (which keep layer 0's attention, so some layer always keeps attention), and the budget
        met within one MLP block without overshooting."""
        inside = all(0 <= c.attention <= self.attention_max(i) and 0 <= c.channels <= self.channel_max(i, c)
                     for i, c in counts.items())
        return inside and 0 <= self.slack(counts) < max(self.block.values())

    def mutate(self, counts: Counts, rng: np.random.RandomState, switches: int, tries: int = 8) -> Counts | None:
        """``counts`` after ``switches`` random level switches and the MLP fill; a draw that changes nothing or
        cannot be filled is drawn again, ``tries`` times at most (None: no feasible change found)."""
        kinds = ["mlp", "attention", "trade"] if any(self.attention_max(i) for i in self.maxima) else ["mlp"]
        kinds += ["block"] if self.whole else []
        for _ in range(tries):
            out = dict(counts)
            for _ in range(switches):
                getattr(self, f"_switch_{kinds[rng.randint(len(kinds))]}")(out, rng)
            out = self.fill(out, rng)
            if out is not None and out != counts:
                return out
        return None

    def _pick(self, rng: np.random.RandomState, ok: Callable[[int], bool], avoid: int = -1) -> int | None:
        choices = [i for i in range(len(self.layers)) if i != avoid and ok(i)]
        return choices[rng.randint(len(choices))] if choices else None

    def _switch_mlp(self, counts: Counts, rng: np.random.RandomState) -> None:
        """Move one MLP level (``steps[j]`` channels) from a layer to another (same channel cost: the budget holds)."""
        j = self._pick(rng, lambda i: counts[i].channels >= self.steps[i])
        if j is None:
            return
        step = self.steps[j]
        k = self._pick(rng, lambda i: counts[i].channels + step <= self.channel_max(i, counts[i])
                       and self.layers[i].channel_cost() == self.layers[j].channel_cost(), avoid=j)
        if k is not None:
            counts[j] = replace(counts[j], channels=counts[j].channels - step)
            counts[k] = replace(counts[k], channels=counts[k].channels + step)

    def _switch_attention(self, counts: Counts, rng: np.random.RandomState) -> None:
        """Move one attention unit from a layer to another of the same unit cost."""
        j = self._pick(rng, lambda i: counts[i].attention > 0)
        if j is None:
            return
        cost = self.layers[j].unit_cost(self.unit)
        k = self._pick(rng, lambda i: counts[i].attention < self.attention_max(i)
                       and self.layers[i].unit_cost(self.unit) == cost, avoid=j)
        if k is not None:
            counts[j] = replace(counts[j], attention=counts[j].attention - 1)
            counts[k] = replace(counts[k], attention=counts[k].attention + 1)

    def _switch_trade(self, counts: Counts, rng: np.random.RandomState) -> None:
        """One attention unit more or less in a layer; the MLP fill then restores the budget."""
        j = self._pick(rng, lambda i: self.attention_max(i) > 0)
        if j is None:
            return
        step = 1 if rng.rand() < 0.5 else -1
        attention = min(max(counts[j].attention + step, 0), self.attention_max(j))
        counts[j] = replace(counts[j], attention=attention)

    def _switch_block(self, counts: Counts, rng: np.random.RandomState) -> None:
        """Remove a layer's whole attention, or the whole MLP of a layer without attention, or give one attention
        unit back to a layer without attention; the fill then restores the budget (and trims an MLP the layer may
        no longer lose whole)."""
        j = self._pick(rng, lambda i: self.attention_max(i) == self.units[i] > 0)
        if j is None:
            return
        c = counts[j]
        if not self.headless(j, c):
            counts[j] = replace(c, attention=self.units[j])
        elif c.channels < self.channel_max(j, c) and rng.rand() < 0.5:
            counts[j] = replace(c, channels=self.channel_max(j, c))
        else:
            counts[j] = replace(c, attention=self.units[j] - 1)

    def fill(self, counts: Counts, rng: np.random.RandomState) -> Counts | None:
        """Add or remove MLP channels (multiples of ``round_to``, random layers) until the budget is met within one
        block without overshooting, first trimming any MLP removal a layer may not have beside its attention (a
        whole MLP where attention came back); None when the bounds leave no way to."""
        out = {i: replace(c, channels=min(c.channels, self.channel_max(i, c))) for i, c in counts.items()}
        for _ in range(4 * len(self.layers) + 4):
            slack = self.slack(out)
            if slack < 0:
                i = self._pick(rng, lambda i: out[i].channels >= self.round_to)
                if i is None:
                    return None
                need = -(slack // self.block[i]) * self.round_to  # ceil(-slack / block) blocks
                have = out[i].channels // self.round_to * self.round_to
                out[i] = replace(out[i], channels=out[i].channels - min(need, have))
            elif slack >= max(self.block.values()):
                i = self._pick(rng, lambda i: out[i].channels + self.round_to <= self.channel_max(i, out[i])
                               and self.block[i] <= slack)
                if i is None:
                    return None
                room = self.channel_max(i, out[i]) - out[i].channels
                add = min(slack // self.block[i] * self.round_to, room // self.round_to * self.round_to)
                out[i] = replace(out[i], channels=out[i].channels + add)
            else:
                return out if self.feasible(out) else None
        return None


class Fitness:
    """Negative KL divergence from the dense model on the objective windows (all, or the first ``low``), of a
    candidate's scoring under given counts, with its reconstruction; memoised per (counts, fidelity)."""

    def __init__(self, session: PruningSession, candidate: Candidate, scores: dict[int, UnitScores], low: int) -> None:
        if session.objective_windows is None:
            raise ConfigError("objective windows", None, "held-apart windows to score the allocation stage",
                              hint="pass objective_windows=... (disjoint from calibration and evaluation text)")
        self.session, self.candidate, self.scores = session, candidate, scores
        self.windows = session.objective_windows
        self.low = min(low, self.windows.shape[0])
        self.reference = dense_reference(session.model, self.windows, top_k=session.kl_top_k,
                                         batch_size=session.batch_size)
        self.memo: dict[tuple, float] = {}
        self.fits: dict[tuple[int, LayerCounts], dict[str, LayerFit]] = {}  # lstsq: a layer's fit, by its counts
        self.evaluations = {"low": 0, "full": 0}

    def selection(self, counts: Counts) -> dict[int, LayerSelection]:
        """The groups ``counts`` remove under the candidate's ranking."""
        return select_counts(self.session.layers, self.scores, counts, self.session.attention_unit)

    def __call__(self, counts: Counts, fidelity: str) -> float:
        key = (tuple(sorted(counts.items())), fidelity)
        if key not in self.memo:
            rows = slice(0, self.low if fidelity == "low" else self.windows.shape[0])
            reference = DenseReference(self.reference.indices[rows], self.reference.logprobs[rows],
                                       self.reference.rest[rows])
            selection = self.selection(counts)
            compensation = self.compensation(counts, selection)
            with masked(self.session.layers, selection, compensation):
                kl = kl_from_reference(self.session.model, self.windows[rows], reference,
                                       batch_size=self.session.batch_size)
            self.memo[key] = -kl if math.isfinite(kl) else -math.inf
            self.evaluations[fidelity] += 1
        return self.memo[key]


    def compensation(self, counts: Counts, selection: dict[int, LayerSelection]) -> dict | Fits | None:
        """The candidate's reconstruction of ``selection``; least-squares fits are solved only for the layers whose
        counts this fitness has not seen (an offspring differs from its parent in a few layers)."""
        if self.candidate.reconstruction != "lstsq":
            return self.session.compensation(self.candidate, selection)
        refit = self.session.least_squares
        for i, c in counts.items():
            if (i, c) not in self.fits:
                self.fits[(i, c)] = refit.layer_fits(self.session.layers[i], selection[i], scoring=True)
        return Fits({i: self.fits[(i, c)] for i, c in counts.items() if self.fits[(i, c)]})

    def once(self, counts: Counts, fidelity: str, keep: Counts | None = None) -> float:
        """``self(counts, fidelity)``, then every cached fit dropped but ``keep``'s (the parent's; None: all): the
        cache never holds more than one fit per layer beside the layers of the plan being scored. An offspring
        that wins re-fits its few changed layers once in the next generation (at Llama-3.1-8B's shape a set of
        fits is about 0.17x the weights: the stage stays near one trial's memory)."""
        score = self(counts, fidelity)
        self.keep_fits(*([keep] if keep is not None else []))
        return score

    def keep_fits(self, *kept: Counts) -> None:
        """Drop the cached fits that none of ``kept`` uses."""
        self.fits = {key: fit for key, fit in self.fits.items() if any(c.get(key[0]) == key[1] for c in kept)}


def _rng(seed: int, generation: int) -> np.random.RandomState:
    return np.random.RandomState((seed * 1_000_003 + generation * 104_729 + 31) % (2**32 - 1))


def refine_allocation(session: PruningSession, candidate: Candidate, selection: dict[int, LayerSelection],
                      config: AllocationConfig, *, seed: int = 0, collective: Collective = LOCAL,
                      time_budget_s: float | None = None, progress: bool = False) -> AllocationResult:
    """Evolve the per-layer counts of ``selection`` (the search's best, for ``candidate``) as the module docstring
    describes; returns the best selection found (``selection`` itself when nothing beats it).

    ``time_budget_s``: no generation starts after this many seconds of the stage (rank 0's clock decides, for
    every rank; the seeds are always scored; None: every generation runs). A stop request (a requeue signal) on
    any rank ends the stage before its next generation with :class:`SearchInterrupted` on every rank.
    ``progress``: a bar of the generations on rank 0."""
    check_block_removal(session, config)
    start = time.perf_counter()
    layers = session.layers
    scoring = replace(candidate, keep_first=0, keep_last=0)  # every layer may lose units in the stage
    scores = collective.run_on(0, lambda: session.unit_scores(scoring))
    budget = Budget(layers, session.budget, session.attention_unit, session.config.round_to,
                    session.config.prune_attention, config.mlp_step, block_removal=config.block_removal)
    fitness = Fitness(session, candidate, scores, config.low_windows)
    seeds = {"search": _counts(layers, selection, session.attention_unit)}
    flap = collective.run_on(0, lambda: _flap_counts(session))
    if flap is not None and budget.feasible(flap):
        seeds["flap"] = flap
    seed_scores = dict(zip(seeds, spread(list(seeds.values()), lambda c: fitness.once(c, "full"), collective)))
    name = max(seed_scores, key=lambda k: (seed_scores[k], k == "search"))
    parent, parent_score = seeds[name], seed_scores[name]
    improved, ran, stopped = 0, 0, {}
    with make_progress() as bar:
        task = bar.add_task("allocation", total=config.generations, info=f"KL {-parent_score:.4f}",
                            visible=progress_enabled(progress) and collective.is_zero)
        for generation in range(config.generations):
            if _budget_spent(start, time_budget_s, generation, collective):
                stopped = {"stopped": "time budget"}
                log.info("allocation stage: time budget reached after %d generations", generation)
                break
            child, score = _generation(budget, fitness, parent, parent_score, config, _rng(seed, generation),
                                       collective)
            if score > parent_score:
                parent, parent_score, improved = child, score, improved + 1
            ran = generation + 1
            bar.update(task, completed=ran, info=f"KL {-parent_score:.4f}")
    evaluations = collective.all_gather(fitness.evaluations)  # every rank's share
    info = {**asdict(config), "fitness": "kl", "start": name, "kl_seeds": {k: -v for k, v in seed_scores.items()},
            "kl": -parent_score, "improvements": improved, "generations_run": ran, **stopped,
            "evaluations": {k: sum(e[k] for e in evaluations) for k in fitness.evaluations},
            "seconds": time.perf_counter() - start,
            "counts": [[parent[i].attention, parent[i].channels] for i in range(len(layers))]}
    if config.block_removal:
        info["removed_blocks"] = _removed_blocks(budget, parent)
    log.info("allocation stage: KL %.4f (%s) -> %.4f after %d generations", -seed_scores[name], name, -parent_score,
             ran)
    return AllocationResult(selection=fitness.selection(parent), info=info)


def _generation(budget: Budget, fitness: Fitness, parent: Counts, parent_score: float, config: AllocationConfig,
                rng: np.random.RandomState, collective: Collective) -> tuple[Counts, float]:
    """One generation: ``config.offspring`` mutants of ``parent`` scored on the low fidelity, the best
    ``survivors`` on every window; returns the best survivor and its score (``parent`` itself when no mutant could
    be drawn)."""
    kids = [k for k in (budget.mutate(parent, rng, 1 + rng.randint(config.max_switches))
                        for _ in range(config.offspring)) if k is not None]
    if not kids:
        return parent, parent_score
    low = spread(kids, lambda c: fitness.once(c, "low", keep=parent), collective)
    top = [kids[i] for i in np.argsort(low, kind="stable")[::-1][:config.survivors]]
    full = spread(top, lambda c: fitness.once(c, "full", keep=parent), collective)
    best = int(np.argmax(full))
    return top[best], full[best]


def _budget_spent(start: float, budget_s: float | None, generation: int, collective: Collective) -> bool:
    """Before a generation: raise :class:`SearchInterrupted` on every rank when any rank was asked to stop (a
    requeue signal, :mod:`~adapruner_lightning.search.stop`), else whether ``budget_s`` seconds have passed since
    ``start`` on rank 0's clock (the same answer on every rank; one small all-gather)."""
    gathered = collective.all_gather({"elapsed": time.perf_counter() - start, "stop": stop_reason()})
    asked = first_stop(gathered)
    if asked is not None:
        rank, reason = asked
        raise SearchInterrupted(f"the search stopped on {reason} (rank {rank}) in the allocation stage after "
                                f"{generation} generations; its trials are in the trace: a rerun resumes after them "
                                "and runs the stage again")
    return budget_s is not None and gathered[0]["elapsed"] > budget_s


def check_block_removal(session: PruningSession, config: AllocationConfig) -> None:
    """Refuse ``block_removal`` where the stage cannot use it, before any work: a session pruned uniformly (the
    stage does not run) or without attention pruning (a layer's MLP goes whole only where its attention is gone)."""
    if not config.block_removal or not config.generations:
        return
    if session.uniform:
        raise ConfigError("search.allocation.block_removal", True, "per-layer shapes (the allocation stage does not "
                          "run when every layer is pruned alike)", hint="leave per_layer='uniform' out (a family "
                          "whose attention reads the shared config, such as phi3, cannot remove blocks)")
    if not session.config.prune_attention:
        raise ConfigError("search.allocation.block_removal", True, "prune_attention=True", hint="a layer's MLP goes "
                          "whole only where its attention is gone too; set prune_attention or leave block_removal off")


def _removed_blocks(budget: Budget, counts: Counts) -> dict[str, list[int]]:
    """The layers whose attention / MLP ``counts`` remove whole (plan provenance)."""
    return {"attention": [i for i, c in sorted(counts.items()) if budget.headless(i, c)],
            "mlp": [i for i, c in sorted(counts.items()) if c.channels and c.channels == budget.layers[i].intermediate]}


def _counts(layers: list[LayerStructure], selection: dict[int, LayerSelection], unit: str) -> Counts:
    return {i: layer_counts(layers[i], selection.get(i, LayerSelection()), unit) for i in range(len(layers))}


def _flap_counts(session: PruningSession) -> Counts | None:
    """FLAP's per-layer counts (its reference scoring on the whole pool; None if this session cannot select it)."""
    flap = Candidate(subset=list(range(session.pool.shape[0])), **FLAP_POINT)
    try:
        return _counts(session.layers, session.select(flap), session.attention_unit)
    except ConfigError as exc:  # e.g. a uniform session
        log.info("allocation stage: no FLAP seed (%s)", exc)
        return None
