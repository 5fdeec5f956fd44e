"""The training-aware selection stage: the search's best few plans each get a few fine-tuning steps, and the one
best on the objective windows after them is kept (DarwinLM, Tang et al., 2024).

Why: recovery shrinks what the search gains before it (on the embedded model, log perplexity after 30 recovery
steps is about 0.48 x log perplexity before + c), so the plan best before training need not be best after it.

How: after the Bayesian search, the ``candidates`` best distinct plans (by objective score, ties to the earlier
trial) are each applied physically to a copy of the dense model, with their repair, and trained for ``steps`` steps
of the LM loss with AdamW on the calibration pool (``batch_size`` pool samples a step, the same seeded order for
every plan; never the objective windows, which rank them afterwards); each is then scored on the objective windows
as the search scores (:meth:`~adapruner_lightning.core.session.PruningSession.score_model`). The stage returns the
trial whose plan scored best after training; the copies are discarded (the plan, not the trained weights, is what
the search returns: the configured recovery trains the pruned model afterwards).

Cost: ``candidates`` x (a deep copy of the model, a physical prune, ``steps`` optimizer steps and one objective
pass). The copy and AdamW's two moments hold about four times the pruned weights beside the dense model: the stage
suits models whose full fine-tuning fits the device. On several ranks every rank trains its share of the plans.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from adapruner_lightning.config import check_positive
from adapruner_lightning.core.physical import apply_plan
from adapruner_lightning.core.plan import PruningPlan
from adapruner_lightning.core.session import Candidate, PruningSession
from adapruner_lightning.distributed import LOCAL, Collective, spread
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.search.trace import TrialRecord

log = logging.getLogger(__name__)


@dataclass
class TrainingAwareConfig:
    """The training-aware selection stage after the search (off while ``candidates`` is 0).

    Args:
        candidates: the best distinct plans of the search trained and ranked again (0: no stage; else at least 2).
        steps: optimizer steps each plan is trained for (LM loss, AdamW).
        lr: their learning rate.
        batch_size: calibration pool samples per step.
    """

    candidates: int = 0
    steps: int = 10
    lr: float = 1e-4
    batch_size: int = 4

    def __post_init__(self) -> None:
        if self.candidates < 0 or self.candidates == 1:
            raise ConfigError("search.training_aware.candidates", self.candidates,
                              "0 (off) or at least 2 plans to rank after training")
        check_positive("search.training_aware.steps", self.steps)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError("search.training_aware.lr", self.lr, "a positive learning rate, e.g. 1e-4")
        check_positive("search.training_aware.batch_size", self.batch_size)


def top_plans(trials: list[TrialRecord], count: int) -> list[TrialRecord]:
    """The ``count`` best scored trials with distinct plans (by score, ties to the earlier trial); repeats of a
    scored plan and failed trials are skipped."""
    ok = [t for t in trials if t.status == "ok" and t.repeat_of is None and t.score is not None]
    ranked = sorted(ok, key=lambda t: (-t.score, t.trial))
    out, seen = [], set()
    for t in ranked:
        if t.digest not in seen:
            seen.add(t.digest)
            out.append(t)
    return out[:count]


def _batches(pool: torch.Tensor, steps: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """``steps`` batches of pool rows in one seeded order (cycled when the pool runs out)."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(pool.shape[0], generator=gen)
                       for _ in range(-(-steps * batch_size // pool.shape[0]))])
    return [pool[order[i * batch_size:(i + 1) * batch_size].to(pool.device)] for i in range(steps)]


def score_after_training(session: PruningSession, plan: PruningPlan, config: TrainingAwareConfig, seed: int) -> float:
    """``plan`` applied to a copy of ``session``'s (dense) model with its repair, trained ``config.steps`` steps
    on the calibration pool, scored on the objective windows (higher is better)."""
    model = copy.deepcopy(session.model)
    try:
        apply_plan(model, plan, refit=session.least_squares if plan.refits_weights else None)
        model.train()
        params = [p for p in model.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        with torch.enable_grad():
            for batch in _batches(session.pool, config.steps, config.batch_size, seed):
                loss = model(input_ids=batch, labels=batch, use_cache=False).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        model.eval()
        return session.score_model(model)
    finally:
        del model
        session.free_memory()


def select_after_training(session: PruningSession, candidate_of: Callable[[dict[str, Any]], Candidate],
                          trials: list[TrialRecord], config: TrainingAwareConfig, *, seed: int = 0,
                          collective: Collective = LOCAL) -> tuple[TrialRecord, dict[str, Any]]:
    """The trial whose plan is best after ``config.steps`` training steps, among the ``config.candidates`` best
    of ``trials`` (``candidate_of``: a trial's params to its candidate, the search space's decoding), and what the
    stage did (the trials, their scores before and after, its wall time)."""
    start = time.perf_counter()
    top = top_plans(trials, config.candidates)
    plans = collective.run_on(0, lambda: [session.plan(candidate_of(t.params)) for t in top])
    after = spread(plans, lambda plan: score_after_training(session, plan, config, seed), collective)
    best = max(range(len(top)), key=lambda i: (after[i], -i))
    info = {**asdict(config), "trials": [t.trial for t in top], "before": [t.score for t in top], "after": after,
            "chose": top[best].trial, "seconds": time.perf_counter() - start}
    log.info("training-aware stage: trial %d (of %s) is best after %d steps", top[best].trial, info["trials"],
             config.steps)
    return top[best], info
