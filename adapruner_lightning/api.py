"""The one-call API for users without Lightning: :func:`prune` (optionally searching first).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from adapruner_lightning.config import renamed
from adapruner_lightning.core.config import PruningConfig
from adapruner_lightning.core.importance import get_metric
from adapruner_lightning.core.physical import apply_plan
from adapruner_lightning.core.plan import PruningPlan
from adapruner_lightning.core.session import PruningSession, check_model
from adapruner_lightning.data.calibration import as_token_batch, pool_and_rest
from adapruner_lightning.data.text import uses_bos
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.search.config import SearchConfig
from adapruner_lightning.search.pipeline import find_plan


def prune(model: nn.Module, tokenizer: Any = None, *, target_ratio: Optional[float] = None,
          metric: Optional[str] = None, calibration: Any = None, objective_data: Any = None,
          search: Optional[SearchConfig] = None, progress: bool = True, objective: Any = None,
          **options: Any) -> PruningPlan:
    """Prune ``model`` in place and return the plan: the one-call API for users without Lightning.

    Args:
        model: a supported HF causal LM.
        tokenizer: its tokenizer (needed when ``calibration``/``objective_data`` are strings).
        target_ratio: fraction of parameters to remove (None: ``PruningConfig``'s default).
        metric: importance metric when not searching (None: ``PruningConfig``'s default).
        calibration: list of strings, a ``datasets.Dataset`` or a LongTensor ``[n, T]``: the pool (a seeded choice
            of ``search.data.pool_size`` samples, or ``num_samples`` without a search) and, for the least-squares
            reconstruction, up to ``search.data.reconstruction_windows`` of the samples left over.
        objective_data: held-apart text or windows scoring candidates (required with ``search``; the search's
            ``data.objective`` says how they score them).
        search: a :class:`~adapruner_lightning.search.config.SearchConfig` to search the solution space first
            (None: no search, the configured metric and schedule).
        progress: show progress bars.
        objective: deprecated name of ``objective_data`` (a :class:`DeprecationWarning`).
        **options: any other :class:`~adapruner_lightning.core.config.PruningConfig` field.

    Example::

        plan = prune(model, tokenizer, target_ratio=0.2, metric="taylor", calibration=["some text ..."])
    """
    objective_data = renamed("prune(objective=...)", objective, "objective_data=...", objective_data)
    given = {"target_ratio": target_ratio, "metric": metric}
    config = PruningConfig(**{k: v for k, v in given.items() if v is not None}, **options)
    search = search if search is not None else SearchConfig(trials=0)
    searching = search.trials > 0
    needs = "gradients" if searching else get_metric(config.metric).needs
    check_model(model, needs_gradients=needs == "gradients")
    if needs != "nothing" and calibration is None:
        raise ConfigError("calibration", None, f"calibration data for metric {config.metric!r} (it needs {needs})",
                          hint="pass calibration=[...texts...] or use magnitude_l2/random")
    if searching and objective_data is None:
        raise ConfigError("objective_data", None, "held-apart text or windows for the search to score candidates")
    n = search.data.pool_size if searching else config.num_samples
    pool, rest = (pool_and_rest(calibration, tokenizer, num_samples=n, sample_len=config.sample_len, seed=config.seed,
                                rest=search.data.reconstruction_windows)
                  if calibration is not None else (torch.zeros(1, 2, dtype=torch.long), None))
    windows = as_token_batch(objective_data, tokenizer, num_samples=search.data.objective_windows,
                             sample_len=search.data.objective_seq_len)[: search.data.objective_windows] \
        if searching else None
    device = next(model.parameters()).device
    session = PruningSession(model, config, pool.to(device), objective_windows=windows, progress=progress,
                             reconstruction_windows=rest.to(device) if rest is not None else None)
    found = find_plan(session, search, progress=progress, bos=uses_bos(tokenizer) if tokenizer is not None else None)
    apply_plan(model, found.plan, refit=found.refit)
    return found.plan
