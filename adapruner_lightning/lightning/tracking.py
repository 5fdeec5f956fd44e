"""Zero-shot accuracy tracked during fit: a small fixed item set per task, scored at every validation.

:class:`ValidationTasks` builds the items once (from the held-out evaluation texts, as the report's tasks are
built) and scores them with :class:`~adapruner_lightning.evaluation.metrics.MultipleChoiceAccuracy`. Under DDP each
rank scores its share of the items and the metric's summed states are synced across the ranks; where the weights
are ZeRO-3 partitioned every forward needs every rank, so each rank scores every item (the same forwards on all).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from adapruner_lightning.errors import ConfigError
from adapruner_lightning.evaluation.items import MULTIPLE_CHOICE, MCItem
from adapruner_lightning.evaluation.loglik import choice_logliks
from adapruner_lightning.evaluation.metrics import MultipleChoiceAccuracy, multiple_choice_tensors


class ValidationTasks:
    """``n_items`` items of each task in ``tasks``, built from ``texts`` (name -> held-out text) with ``seed``."""

    def __init__(self, tasks: Sequence[str], texts: dict[str, str], n_items: int, seed: int = 0) -> None:
        from adapruner_lightning.evaluation.evaluate import task_items
        from adapruner_lightning.evaluation.tasks import get_task

        for name in tasks:
            if get_task(name).kind != MULTIPLE_CHOICE:
                raise ConfigError("eval.val_tasks", name, "multiple-choice tasks (acc / acc_norm are tracked during fit)",
                                  hint=f"score {name} at the end of fit through eval.tasks instead")
        self.items: dict[str, list[MCItem]] = {name: task_items(name, texts, n_items=n_items, seed=seed)
                                               for name in tasks}

    def score(self, model: nn.Module, tokenizer: Any, *, rank: int = 0, world_size: int = 1,
              every_item: bool = False, batch_size: int = 8) -> dict[str, float]:
        """``{"val/acc/<task>": ..., "val/acc_norm/<task>": ...}`` over all ranks' items.

        Args:
            model: the model being fine-tuned (LoRA-wrapped or not).
            tokenizer: its tokenizer.
            rank: this rank; world_size: the number of ranks (items are dealt ``rank::world_size``).
            every_item: score every item on this rank and skip the sync (ZeRO-3: each forward is collective).
            batch_size: sequences per forward pass.
        """
        out: dict[str, float] = {}
        shared = world_size > 1 and not every_item
        for task, items in self.items.items():
            mine = items[rank::world_size] if shared else items
            metric = MultipleChoiceAccuracy(sync_on_compute=shared).to(_device(model))
            if mine:
                logliks = choice_logliks(model, tokenizer, mine, batch_size=batch_size, progress=False)
                metric.update(*[t.to(_device(model)) for t in multiple_choice_tensors(mine, logliks)])
            scores = metric.compute()
            out[f"val/acc/{task}"] = float(scores["acc"])
            out[f"val/acc_norm/{task}"] = float(scores["acc_norm"])
        return out


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
