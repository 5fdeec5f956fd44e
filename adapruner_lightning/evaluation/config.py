"""EvalConfig: what a run scores its model on, at the end of each stage and during the fine-tune.

The callback's ``eval`` section (``AdaPrunerCallback(eval=EvalConfig(...))``; in YAML ``adapruner: eval: {...}``)::

    eval:
      texts: ["austen:evaluation"]     # held-out text: perplexity, and the items of the offline tasks
      tasks: [austen_cloze, piqa]      # zero-shot tasks of the report (dense / pruned / recovered)
      max_tokens: 8192                 # tokens per text
      items: 100                       # items per task
      val_tasks: null                  # tracked at every validation (null: the multiple-choice ones of tasks)
      val_items: 16                    # items per tracked task
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from adapruner_lightning.config import check_positive
from adapruner_lightning.errors import ConfigError


@dataclass
class EvalConfig:
    """Held-out evaluation of a run: the report's quality table and the zero-shot accuracy tracked during fit.

    Args:
        texts: held-out text specs (e.g. ``["austen:evaluation"]``): perplexity per text, and the text the offline
            tasks build their items from; None: no evaluation in the report.
        tasks: zero-shot tasks scored for the report (standard ones such as ``piqa``, or offline ones such as
            ``austen_cloze``).
        max_tokens: tokens per evaluation text.
        items: items per zero-shot task of the report.
        val_tasks: zero-shot tasks scored at every validation of the fit and logged as ``val/acc/<task>`` and
            ``val/acc_norm/<task>`` (items built from ``texts``, synced across ranks); None: the multiple-choice
            tasks of ``tasks``; ``[]``: off.
        val_items: items per validation task (kept small: they are scored at every validation).

    Raises:
        ConfigError: an unknown task, a log-likelihood task named in ``val_tasks``, an offline task tracked
            without ``texts``, or a count below 1.

    Example::

        EvalConfig(texts=["austen:evaluation"], tasks=["austen_cloze", "piqa"], items=50)
    """

    texts: Optional[list[str]] = None
    tasks: list[str] = field(default_factory=list)
    max_tokens: int = 8192
    items: int = 100
    val_tasks: Optional[list[str]] = None
    val_items: int = 16

    def __post_init__(self) -> None:
        from adapruner_lightning.evaluation.tasks import get_task

        self.tasks = list(self.tasks or [])
        for name in [*self.tasks, *(self.val_tasks or [])]:
            get_task(name)
        check_positive("eval.max_tokens", self.max_tokens)
        check_positive("eval.items", self.items)
        check_positive("eval.val_items", self.val_items)
        if self.val_tasks is not None:
            others = [name for name in self.val_tasks if not _multiple_choice(name)]
            if others:
                raise ConfigError("eval.val_tasks", others, "multiple-choice tasks (acc / acc_norm are tracked during fit)",
                                  hint="score log-likelihood tasks such as lambada_openai through eval.tasks")
        offline = [name for name in self.tracked_tasks if get_task(name).offline]
        if offline and not self.texts:
            raise ConfigError("eval.val_tasks", offline, "eval.texts to build the offline tasks' items from",
                              hint="set eval.texts (held-out text), track standard tasks, or pass eval.val_tasks=[]")

    @property
    def tracked_tasks(self) -> list[str]:
        """The tasks scored at every validation: ``val_tasks``, or the multiple-choice tasks of ``tasks``."""
        if self.val_tasks is not None:
            return list(self.val_tasks)
        return [name for name in self.tasks if _multiple_choice(name)]


def _multiple_choice(name: str) -> bool:
    from adapruner_lightning.evaluation.items import MULTIPLE_CHOICE
    from adapruner_lightning.evaluation.tasks import get_task

    return get_task(name).kind == MULTIPLE_CHOICE
