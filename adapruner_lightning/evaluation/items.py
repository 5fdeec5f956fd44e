"""Multiple-choice items and task specifications: the vocabulary every task module and scorer shares.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adapruner_lightning.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice item, in lm-eval's terms.

    Ordinary items (``partial=False``) score ``delimiter + choice`` after ``context`` for each choice.
    Partial-scoring items (WinoGrande, lm-eval's ``multiple_input``) have one context per choice and a
    shared continuation: ``choices`` holds the per-choice contexts and ``delimiter + continuation`` is
    scored after ``context + choice``.

    ``choices`` are stored as lm-eval's ``doc_to_choice`` returns them, without the leading space; the
    space is lm-eval's ``target_delimiter`` (``" "``), prepended to every scored continuation. ``acc_norm``
    divides by ``len(choice)`` (characters, without the delimiter), as lm-eval does.

    Attributes:
        context: the prompt (``""`` for partial items, where the choices are the contexts).
        choices: the candidate continuations (or, with ``partial``, the candidate contexts).
        gold: index of the correct choice.
        task: name of the task the item belongs to.
        partial: WinoGrande-style partial scoring (see above).
        continuation: the shared continuation of a partial item, without the delimiter.
        delimiter: put between context and continuation (lm-eval's ``target_delimiter``).
    """

    context: str
    choices: tuple[str, ...]
    gold: int
    task: str = ""
    partial: bool = False
    continuation: str = ""
    delimiter: str = " "

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(self.choices))
        if len(self.choices) < 2 or not all(isinstance(c, str) for c in self.choices):
            raise ConfigError(f"{self.task or 'item'}.choices", self.choices, "two or more strings")
        if not isinstance(self.gold, int) or not 0 <= self.gold < len(self.choices):
            raise ConfigError(f"{self.task or 'item'}.gold", self.gold, f"an index in [0, {len(self.choices)})")
        if self.partial and not self.continuation:
            raise ConfigError(f"{self.task or 'item'}.continuation", self.continuation, "a non-empty shared continuation")

    def requests(self) -> list[tuple[str, str]]:
        """The ``(context, continuation)`` pair scored for each choice, in choice order."""
        if self.partial:
            return [(self.context + choice, self.delimiter + self.continuation) for choice in self.choices]
        return [(self.context, self.delimiter + choice) for choice in self.choices]

    def choice_lengths(self) -> list[int]:
        """Length in characters of each choice (lm-eval's ``acc_norm`` denominator)."""
        return [len(choice) for choice in self.choices]

    @property
    def chance(self) -> float:
        """Accuracy of a uniform random guess on this item."""
        return 1.0 / len(self.choices)


@dataclass(frozen=True)
class ContinuationItem:
    """One log-likelihood item (lm-eval's ``output_type: loglikelihood``, e.g. LAMBADA).

    ``delimiter + continuation`` is scored after ``context``; the item counts as correct when every
    continuation token is the model's greedy (arg-max) choice, lm-eval's ``acc`` (``is_greedy``).

    Attributes:
        context: the prompt.
        continuation: the scored target, without the delimiter.
        task: name of the task the item belongs to.
        delimiter: put between context and continuation (``" "``).
    """

    context: str
    continuation: str
    task: str = ""
    delimiter: str = " "

    def __post_init__(self) -> None:
        if not self.continuation:
            raise ConfigError(f"{self.task or 'item'}.continuation", self.continuation, "a non-empty target")

    def requests(self) -> list[tuple[str, str]]:
        """The one ``(context, continuation)`` pair scored."""
        return [(self.context, self.delimiter + self.continuation)]


#: ``TaskSpec.kind`` of multiple-choice tasks (acc / acc_norm).
MULTIPLE_CHOICE = "multiple_choice"
#: ``TaskSpec.kind`` of log-likelihood tasks (greedy acc / perplexity).
LOGLIKELIHOOD = "loglikelihood"


@dataclass(frozen=True)
class TaskSpec:
    """A registered zero-shot task.

    Standard tasks have ``convert`` (one published record -> :class:`MCItem`) and the ``datasets`` id
    ``hf_path``/``hf_name``; offline tasks have ``build(text, n_items, seed) -> list[MCItem]``.

    Attributes:
        name: registry key.
        description: one line for tables and ``--help``.
        n_choices: choices per item (ARC varies: 3 to 5, mostly 4; the usual value is given).
        convert: record converter of a standard task.
        hf_path: ``datasets`` repository of a standard task.
        hf_name: ``datasets`` configuration name, if any.
        build: generator of an offline task.
        fields: the published record fields a standard task reads (for error messages and docs).
        split: the split lm-eval's default task scores (``test`` for ARC, OpenBookQA and LAMBADA).
        kind: :data:`MULTIPLE_CHOICE` (items are :class:`MCItem`) or :data:`LOGLIKELIHOOD`
            (:class:`ContinuationItem`: greedy accuracy and perplexity, no ``acc_norm``).
    """

    name: str
    description: str
    n_choices: int
    convert: Callable[[Mapping[str, Any]], MCItem] | None = None
    hf_path: str | None = None
    hf_name: str | None = None
    build: Callable[[str, int, int], list[MCItem]] | None = None
    fields: tuple[str, ...] = field(default=())
    split: str = "validation"
    kind: str = MULTIPLE_CHOICE

    @property
    def offline(self) -> bool:
        """True for tasks generated from text (no download, no file)."""
        return self.build is not None

    @property
    def chance(self) -> float:
        """Accuracy of uniform random guessing, ``1 / n_choices`` (0 for log-likelihood tasks)."""
        return 1.0 / self.n_choices if self.kind == MULTIPLE_CHOICE else 0.0
