"""The one-call API for users without Lightning: :func:`prune` (optionally searching first).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.importance import get_metric
from adapruner_lightning.core.physical import apply_plan
from adapruner_lightning.core.plan import PruningPlan
from adapruner_lightning.core.session import PruningSession, check_model
from adapruner_lightning.data.calibration import as_token_batch
from adapruner_lightning.data.text import uses_bos
from adapruner_lightning.errors import ConfigError


def prune(model: nn.Module, tokenizer: Any = None, *, target_ratio: float = 0.2, metric: str = "taylor",
          calibration: Any = None, objective: Any = None, search: "Any | None" = None, progress: bool = True,
          **options: Any) -> PruningPlan:
    """Prune ``model`` in place and return the plan: the one-call API for users without Lightning.

    Args:
        model: a supported HF causal LM.
        tokenizer: its tokenizer (needed when ``calibration``/``objective`` are strings).
        target_ratio: fraction of parameters to remove.
        metric: importance metric when not searching.
        calibration: list of strings, a ``datasets.Dataset`` or a LongTensor ``[n, T]``.
        objective: held-apart text or windows scoring candidates (required with ``search``).
        search: a :class:`~adapruner_lightning.search.config.SearchConfig` to search the solution space first.
        progress: show progress bars.
        **options: any other :class:`~adapruner_lightning.core.config.PruningConfig` field.

    Example::

        plan = prune(model, tokenizer, target_ratio=0.2, metric="taylor", calibration=["some text ..."])
    """
    config = PruningConfig(target_ratio=target_ratio, metric=metric, **options)
    searching = search is not None and search.trials > 0
    needs = "gradients" if searching else get_metric(metric).needs
    check_model(model, needs_gradients=needs == "gradients")
    if needs != "nothing" and calibration is None:
        raise ConfigError("calibration", None, f"calibration data for metric {metric!r} (it needs {needs})",
                          hint="pass calibration=[...texts...] or use magnitude_l2/random")
    n = search.data.pool_size if searching else config.num_samples
    pool = (as_token_batch(calibration, tokenizer, num_samples=n, sample_len=config.sample_len, seed=config.seed)
            if calibration is not None else torch.zeros(1, 2, dtype=torch.long))
    windows = None
    if searching:
        if objective is None:
            raise ConfigError("objective", None, "held-apart text or windows for the search to score candidates")
        windows = as_token_batch(objective, tokenizer, num_samples=search.data.objective_windows,
                                 sample_len=search.data.objective_seq_len)[: search.data.objective_windows]
    session = PruningSession(model, config, pool.to(next(model.parameters()).device), objective=windows, progress=progress)
    if searching:
        from adapruner_lightning.search.runner import run_search

        plan = run_search(session, search).plan
    else:
        plan = session.plan(session.default_candidate())
    refit = session.least_squares if plan.refits_weights else None
    session.release()
    plan.provenance["bos"] = uses_bos(tokenizer) if tokenizer is not None else None
    apply_plan(model, plan, refit=refit)
    return plan
