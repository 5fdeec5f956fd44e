"""Offline zero-shot tasks generated deterministically from held-out real text (no download).

* ``austen_next_sentence_easy``: three consecutive sentences, then pick the true next sentence out of
  2; the distractor is a sentence from elsewhere in the same text of about the gold's length. Chance 1/2.
* ``austen_next_sentence``: the same with 4 choices. Chance 1/4.
* ``austen_cloze``: the start of a sentence (after some context), then pick its true next words out of 4
  (the others are word spans of the same length from elsewhere in the text). Chance 1/4.

The names say "austen" because the embedded default evaluation text is Jane Austen's; any text works.
Distractors are length-matched in both next-sentence tasks: with random-length distractors the summed
log-likelihood mostly measures length, and the dense SmolLM2-135M scored at chance (0.48-0.57 acc with
2 choices on Persuasion) while length-matched 2-choice items give it about 0.72.
Sentences are found by :func:`split_sentences` (a regular expression: ``.``/``!``/``?``, optional closing
quotes or brackets, whitespace, then an upper-case letter or an opening quote; common abbreviations such
as "Mr." and single-letter initials do not end a sentence). Paragraphs are separated by blank lines.
"""

from __future__ import annotations

import bisect
import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from adapruner_lightning.errors import ConfigError
from adapruner_lightning.evaluation.items import MCItem, TaskSpec

log = logging.getLogger(__name__)

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st esq col capt gen lt rev sr jr messrs mme mlle prof hon viz vs".split()
)


_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]_]*\s+(?=[\"'\u201c\u2018(\[_]*[A-Z0-9])")


_HEADING = re.compile(r"^(chapter|volume|book|part|letter)\b[\s\w.:-]{0,20}$|^finis$|^the end$", re.IGNORECASE)


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs of ``text`` (separated by blank lines), whitespace collapsed, headings dropped.

    A heading is a paragraph without a lower-case letter, a "Chapter 3" / "Volume II" / "Finis" line, or
    any paragraph of fewer than 5 words that does not end like a sentence (title-page lines such as
    "by" or "Jane Austen").
    """
    paragraphs = (" ".join(p.split()) for p in re.split(r"\n\s*\n", text))
    return [p for p in paragraphs if p and re.search(r"[a-z]", p) and not _is_heading(p)]


def _is_heading(paragraph: str) -> bool:
    """True for chapter headings, title-page lines and similar non-prose paragraphs."""
    if _HEADING.match(paragraph):
        return True
    return len(paragraph.split()) < 5 and not re.search(r"[.!?;:,]['\"\u201d\u2019)\]_]*$", paragraph)


def _is_abbreviation(before_period: str) -> bool:
    """True when the word ending ``before_period`` is an abbreviation (Mr, Mrs, ...) or an initial ("J")."""
    word = re.search(r"([A-Za-z]+)$", before_period)
    if word is None:
        return False
    token = word.group(1)
    return token.lower() in _ABBREVIATIONS or (len(token) == 1 and token.isupper() and token != "I")


def split_sentences(paragraph: str) -> list[str]:
    """Split one paragraph into sentences with a regular expression (see the module docstring).

    A sentence ends at ``.``, ``!`` or ``?`` (optionally followed by closing quotes or brackets) followed
    by whitespace and an upper-case letter, digit or opening quote, unless the word before a ``.`` is a
    common abbreviation (Mr, Mrs, Dr, St, ...) or a single capital letter other than "I" (an initial).
    """
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(paragraph):
        if paragraph[match.start()] == "." and _is_abbreviation(paragraph[start : match.start()]):
            continue
        sentences.append(paragraph[start : match.end()].strip())
        start = match.end()
    tail = paragraph[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


@dataclass(frozen=True)
class _Sentence:
    """A sentence with its place in the text."""

    text: str
    index: int
    paragraph: int
    first_in_paragraph: bool

    @property
    def n_words(self) -> int:
        return len(self.text.split())


def _sentences(text: str) -> list[_Sentence]:
    """All sentences of ``text`` in order, with paragraph information."""
    out: list[_Sentence] = []
    for p, paragraph in enumerate(split_paragraphs(text)):
        for k, sentence in enumerate(split_sentences(paragraph)):
            out.append(_Sentence(sentence, len(out), p, k == 0))
    return out


def _join_context(sentences: Sequence[_Sentence]) -> str:
    """Sentences joined with a space inside a paragraph and a blank line between paragraphs."""
    parts: list[str] = []
    for prev, sentence in zip([None, *sentences[:-1]], sentences):
        if prev is not None:
            parts.append("\n\n" if sentence.paragraph != prev.paragraph else " ")
        parts.append(sentence.text)
    return "".join(parts)


def _check_task_args(text: str, n_items: int, n_choices: int, context: int) -> None:
    """Raise :class:`ConfigError` for unusable generator arguments."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("text", type(text).__name__, "a non-empty string of real text")
    if n_items < 1:
        raise ConfigError("n_items", n_items, "an integer >= 1")
    if n_choices < 2:
        raise ConfigError("n_choices", n_choices, "an integer >= 2")
    if context < 1:
        raise ConfigError("context_sentences", context, "an integer >= 1")


def _too_few(what: str, found: int, needed: int) -> ConfigError:
    """The error for a text too short to build a task from."""
    return ConfigError("text", f"{found} usable {what}", f"at least {needed}", hint="pass a longer text or ask for fewer items")


class _DistractorPool:
    """Sentences usable as distractors, sorted by length in characters for length-matched draws."""

    def __init__(self, sentences: Sequence[_Sentence]) -> None:
        self.by_length = sorted(sentences, key=lambda s: (len(s.text), s.index))
        self.lengths = [len(s.text) for s in self.by_length]

    def draw(self, rng: random.Random, gold: _Sentence, k: int, *, match_length: bool, min_distance: int) -> list[str]:
        """``k`` distinct sentence texts far from ``gold`` (``min_distance`` sentences), not equal to it."""
        if match_length:
            candidates = self._nearest_in_length(len(gold.text), 8 * k + 16)
        else:
            candidates = rng.sample(self.by_length, min(len(self.by_length), 8 * k + 16))
        rng.shuffle(candidates)
        seen = {gold.text.casefold()}
        out: list[str] = []
        for cand in candidates:
            if abs(cand.index - gold.index) >= min_distance and cand.text.casefold() not in seen:
                out.append(cand.text)
                seen.add(cand.text.casefold())
                if len(out) == k:
                    return out
        raise _too_few("distractor sentences", len(out), k)

    def _nearest_in_length(self, length: int, count: int) -> list[_Sentence]:
        """The ``count`` sentences whose length is closest to ``length`` (a length bucket)."""
        mid = bisect.bisect_left(self.lengths, length)
        lo, hi = max(0, mid - count), min(len(self.by_length), mid + count)
        window = self.by_length[lo:hi]
        return sorted(window, key=lambda s: (abs(len(s.text) - length), s.index))[:count]


def make_next_sentence_task(
    text: str,
    *,
    n_items: int = 200,
    n_choices: int = 4,
    context_sentences: int = 3,
    seed: int = 0,
    name: str = "next_sentence",
    match_length: bool = True,
    min_words: int = 5,
    max_words: int = 40,
    min_distance: int = 50,
) -> list[MCItem]:
    """Items "which sentence comes next?" built deterministically from ``text``.

    The gold is a sentence that is not the first of its paragraph (so it continues the context's
    thought); the context is the ``context_sentences`` sentences before it (a blank line where a
    paragraph changes). Distractors are other sentences of the same text at least ``min_distance``
    sentences away, with ``match_length`` the ones closest to the gold in length (length is no clue;
    the registered tasks use this), else drawn at random (length dominates the raw score, which makes
    the task much noisier, not easier). Gold and distractors have
    ``min_words``..``max_words`` words. The gold's position among the choices is drawn at random.
    Chance accuracy is ``1 / n_choices``.

    Args:
        text: held-out real text (paragraphs separated by blank lines).
        n_items: number of items (fewer if the text has fewer usable sentences).
        n_choices: choices per item, the gold included.
        context_sentences: sentences of context.
        seed: the same seed and text give the same items.
        name: the items' ``task`` name.
        match_length: length-matched distractors (hard) or random ones (easy).
        min_words: shortest usable gold/distractor sentence, in words.
        max_words: longest usable gold/distractor sentence, in words.
        min_distance: how far (in sentences) a distractor must be from the gold.

    Returns:
        The items, in text order.

    Raises:
        ConfigError: bad arguments, or a text too short for even one item.
    """
    _check_task_args(text, n_items, n_choices, context_sentences)
    sentences = _sentences(text)
    usable = [s for s in sentences if min_words <= s.n_words <= max_words]
    golds = [s for s in usable if s.index >= context_sentences and not s.first_in_paragraph]
    if not golds or len(usable) < n_choices + 1:
        raise _too_few("sentences", len(golds), 1)
    rng = random.Random(f"{name}:{seed}:{n_choices}:{context_sentences}")
    chosen = sorted(rng.sample(golds, min(n_items, len(golds))), key=lambda s: s.index)
    pool = _DistractorPool(usable)
    items = []
    for gold in chosen:
        context = _join_context(sentences[gold.index - context_sentences : gold.index])
        distractors = pool.draw(rng, gold, n_choices - 1, match_length=match_length, min_distance=min_distance)
        position = rng.randrange(n_choices)
        choices = tuple(distractors[:position] + [gold.text] + distractors[position:])
        items.append(MCItem(context, choices, position, task=name))
    if len(items) < n_items:
        log.warning("%s: the text gave %d items, fewer than the %d asked for", name, len(items), n_items)
    return items


def make_cloze_task(
    text: str,
    *,
    n_items: int = 200,
    n_choices: int = 4,
    answer_words: int = 3,
    context_sentences: int = 2,
    seed: int = 0,
    name: str = "cloze",
    min_distance: int = 50,
) -> list[MCItem]:
    """Items "which words come next?" built deterministically from ``text``.

    A sentence of at least ``answer_words + 4`` words is cut after a random word (at least 3 words in);
    the context is the ``context_sentences`` sentences before it plus the cut sentence's start, the gold is
    the next ``answer_words`` words, and the distractors are ``answer_words``-word spans from other
    sentences at least ``min_distance`` sentences away (never starting a sentence, so capitals are no
    clue). Chance accuracy is ``1 / n_choices``.

    Args:
        text: held-out real text.
        n_items: number of items (fewer if the text is short).
        n_choices: choices per item, the gold included.
        answer_words: words in each choice.
        context_sentences: whole sentences of context before the cut sentence.
        seed: the same seed and text give the same items.
        name: the items' ``task`` name.
        min_distance: how far (in sentences) a distractor's sentence must be from the gold's.

    Returns:
        The items, in text order.

    Raises:
        ConfigError: bad arguments, or a text too short for even one item.
    """
    _check_task_args(text, n_items, n_choices, max(context_sentences, 1))
    if answer_words < 1:
        raise ConfigError("answer_words", answer_words, "an integer >= 1")
    sentences = _sentences(text)
    long_enough = [s for s in sentences if s.n_words >= answer_words + 4]
    golds = [s for s in long_enough if s.index >= context_sentences]
    if not golds or len(long_enough) < n_choices + 1:
        raise _too_few("sentences", len(golds), 1)
    rng = random.Random(f"{name}:{seed}:{n_choices}:{answer_words}")
    chosen = sorted(rng.sample(golds, min(n_items, len(golds))), key=lambda s: s.index)
    items = []
    for gold_sentence in chosen:
        words = gold_sentence.text.split()
        cut = rng.randrange(3, len(words) - answer_words + 1)
        gold = " ".join(words[cut : cut + answer_words])
        context = _join_context(sentences[gold_sentence.index - context_sentences : gold_sentence.index + 1])
        context = context[: len(context) - len(gold_sentence.text)] + " ".join(words[:cut])
        distractors = _draw_spans(rng, long_enough, gold_sentence, gold, n_choices - 1, answer_words, min_distance)
        position = rng.randrange(n_choices)
        choices = tuple(distractors[:position] + [gold] + distractors[position:])
        items.append(MCItem(context, choices, position, task=name))
    return items


def _draw_spans(
    rng: random.Random, pool: Sequence[_Sentence], gold_sentence: _Sentence, gold: str, k: int, n_words: int, min_distance: int
) -> list[str]:
    """``k`` distinct ``n_words``-word spans (not sentence-initial) from sentences far from the gold's."""
    seen, out = {gold.casefold()}, []
    for _ in range(50 * k):
        sentence = pool[rng.randrange(len(pool))]
        if abs(sentence.index - gold_sentence.index) < min_distance:
            continue
        words = sentence.text.split()
        start = rng.randrange(1, len(words) - n_words + 1)
        span = " ".join(words[start : start + n_words])
        if span.casefold() not in seen:
            seen.add(span.casefold())
            out.append(span)
            if len(out) == k:
                return out
    raise _too_few("distractor spans", len(out), k)


def _offline(name: str, description: str, n_choices: int, builder: Callable[..., list[MCItem]], **kw: Any) -> TaskSpec:
    """A :class:`TaskSpec` for a generated task with fixed generator settings."""

    def build(text: str, n_items: int, seed: int = 0) -> list[MCItem]:
        return builder(text, n_items=n_items, n_choices=n_choices, seed=seed, name=name, **kw)

    return TaskSpec(name, description, n_choices, build=build)


OFFLINE_TASKS: dict[str, TaskSpec] = {
    "austen_next_sentence_easy": _offline(
        "austen_next_sentence_easy", "true next sentence vs 1 length-matched sentence of the same text (chance 1/2)", 2,
        make_next_sentence_task, match_length=True,
    ),
    "austen_next_sentence": _offline(
        "austen_next_sentence", "true next sentence vs 3 length-matched sentences of the same text (chance 1/4)", 4,
        make_next_sentence_task, match_length=True,
    ),
    "austen_cloze": _offline(
        "austen_cloze", "true next 3 words vs 3 word spans from elsewhere in the text (chance 1/4)", 4, make_cloze_task,
    ),
}


def build_offline_task(name: str, text: str, n_items: int = 200, seed: int = 0) -> list[MCItem]:
    """Build the items of the offline task ``name`` from ``text``.

    Args:
        name: a key of :data:`OFFLINE_TASKS`.
        text: held-out real text.
        n_items: number of items.
        seed: generator seed.

    Returns:
        The items.

    Raises:
        ConfigError: ``name`` is not an offline task, or the text is too short.
    """
    if name not in OFFLINE_TASKS:
        raise ConfigError("offline task", name, f"one of {sorted(OFFLINE_TASKS)}")
    build = OFFLINE_TASKS[name].build
    assert build is not None
    return build(text, n_items, seed)
