"""Zero-shot multiple-choice tasks: the standard seven in lm-evaluation-harness form, and offline tasks.

Standard tasks (``boolq``, ``piqa``, ``hellaswag``, ``winogrande``, ``arc_easy``, ``arc_challenge``,
``openbookqa``) convert one record of the task's published Hugging Face ``datasets`` format into an
:class:`MCItem` with lm-eval's zero-shot prompt, choices and gold index. :func:`load_task` reads them
from a local ``.jsonl`` / ``.json`` / ``.parquet`` file, or through ``datasets.load_dataset`` (network).

Offline tasks are generated deterministically from held-out real text (no download):

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
import json
import logging
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapruner_lightning.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "MCItem",
    "OFFLINE_TASKS",
    "STANDARD_TASKS",
    "TASKS",
    "TaskSpec",
    "build_offline_task",
    "load_task",
    "make_cloze_task",
    "make_next_sentence_task",
    "read_records",
    "split_paragraphs",
    "split_sentences",
]


# --------------------------------------------------------------------------------------------------
# items
# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# standard tasks: one record of the published format -> MCItem (lm-eval's prompts)
# --------------------------------------------------------------------------------------------------
def _field(record: Mapping[str, Any], *names: str) -> Any:
    """The first of ``names`` present in ``record``; :class:`ConfigError` naming the fields when none is."""
    for name in names:
        if name in record:
            return record[name]
    raise ConfigError("record", sorted(record), f"a record with the field {' or '.join(repr(n) for n in names)}")


def _unlabelled(task: str, value: Any) -> ConfigError:
    """The error for a record without a usable gold label (test splits hide them)."""
    return ConfigError(
        f"{task} label", value, "a gold label", hint="test splits of these tasks are unlabelled; use the validation split"
    )


def convert_boolq(record: Mapping[str, Any]) -> MCItem:
    """BoolQ (``super_glue/boolq``: ``label`` 0/1, or ``google/boolq``: ``answer`` bool) -> item."""
    label = record["label"] if "label" in record else _field(record, "answer")
    if label in (None, -1, ""):
        raise _unlabelled("boolq", label)
    context = f"{_field(record, 'passage')}\nQuestion: {_field(record, 'question')}?\nAnswer:"
    return MCItem(context, ("no", "yes"), int(bool(label)) if isinstance(label, bool) else int(label), task="boolq")


def convert_piqa(record: Mapping[str, Any]) -> MCItem:
    """PIQA (``goal``, ``sol1``, ``sol2``, ``label``) -> item."""
    label = _field(record, "label")
    if label in (None, -1, ""):
        raise _unlabelled("piqa", label)
    choices = (_field(record, "sol1"), _field(record, "sol2"))
    return MCItem(f"Question: {_field(record, 'goal')}\nAnswer:", choices, int(label), task="piqa")


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag text cleaning: strip, ``" [title]"`` -> ``". "``, drop ``[...]``, ``"  "`` -> ``" "``."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def convert_hellaswag(record: Mapping[str, Any]) -> MCItem:
    """HellaSwag (``activity_label``, ``ctx_a``, ``ctx_b``, ``endings``, ``label``) -> item."""
    label = _field(record, "label")
    if label in (None, -1, ""):
        raise _unlabelled("hellaswag", label)
    ctx = _field(record, "ctx_a") + " " + _field(record, "ctx_b").capitalize()
    query = hellaswag_preprocess(_field(record, "activity_label") + ": " + ctx)
    choices = tuple(hellaswag_preprocess(ending) for ending in _field(record, "endings"))
    return MCItem(query, choices, int(label), task="hellaswag")


def convert_winogrande(record: Mapping[str, Any]) -> MCItem:
    """WinoGrande (``sentence`` with one ``_``, ``option1``, ``option2``, ``answer`` "1"/"2") -> partial item.

    As lm-eval's ``preprocess_winogrande``: the choices are ``sentence[:i] + option`` (``i`` = index of
    ``_``), the shared continuation is ``sentence[i + 1:].strip()`` scored after the delimiter ``" "``,
    and the gold is ``{"1": 0, "2": 1}[answer]``.
    """
    answer = str(_field(record, "answer")).strip()
    if answer not in ("1", "2"):
        raise _unlabelled("winogrande", answer)
    sentence = _field(record, "sentence")
    if "_" not in sentence:
        raise ConfigError("winogrande sentence", sentence, "a sentence with a '_' blank")
    idx = sentence.index("_")
    choices = tuple(sentence[:idx] + option for option in (_field(record, "option1"), _field(record, "option2")))
    continuation = sentence[idx + 1 :].strip()
    return MCItem("", choices, int(answer) - 1, task="winogrande", partial=True, continuation=continuation)


def _choices_and_key(record: Mapping[str, Any], task: str) -> tuple[list[str], list[str], str]:
    """Texts, labels and answer key of an ARC / OpenBookQA record (HF layout or the original nested one)."""
    choices = _field(record, "choices") if "choices" in record else _field(record, "question")["choices"]
    if isinstance(choices, Mapping):
        texts, labels = list(choices["text"]), [str(x).strip() for x in choices["label"]]
    else:  # original AI2 jsonl: a list of {"text", "label"}
        texts, labels = [c["text"] for c in choices], [str(c["label"]).strip() for c in choices]
    key = str(_field(record, "answerKey")).strip()
    if not key:
        raise _unlabelled(task, key)
    return texts, labels, key


def _key_index(labels: list[str], key: str, task: str) -> int:
    """Index of ``key`` in ``labels``; digit keys also match letter labels ("1" -> "A") and back."""
    if key in labels:
        return labels.index(key)
    swapped = chr(ord("A") + int(key) - 1) if key.isdigit() else str(ord(key) - ord("A") + 1)
    if swapped in labels:
        return labels.index(swapped)
    raise ConfigError(f"{task} answerKey", key, f"one of the choice labels {labels}")


def _arc(task: str) -> Callable[[Mapping[str, Any]], MCItem]:
    """Converter for ``arc_easy`` / ``arc_challenge`` (``question``, ``choices{text,label}``, ``answerKey``)."""

    def convert(record: Mapping[str, Any]) -> MCItem:
        texts, labels, key = _choices_and_key(record, task)
        question = _field(record, "question")
        question = question["stem"] if isinstance(question, Mapping) else question
        return MCItem(f"Question: {question}\nAnswer:", tuple(texts), _key_index(labels, key, task), task=task)

    convert.__doc__ = f"{task} record (``question``, ``choices``, ``answerKey``; labels may be digits) -> item."
    return convert


def convert_openbookqa(record: Mapping[str, Any]) -> MCItem:
    """OpenBookQA (``question_stem``, ``choices{text,label}``, ``answerKey``) -> item; the prompt is the bare stem."""
    texts, labels, key = _choices_and_key(record, "openbookqa")
    stem = record["question_stem"] if "question_stem" in record else _field(record, "question")["stem"]
    return MCItem(stem, tuple(texts), _key_index(labels, key, "openbookqa"), task="openbookqa")


# --------------------------------------------------------------------------------------------------
# offline tasks generated from text
# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------
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
    """

    name: str
    description: str
    n_choices: int
    convert: Callable[[Mapping[str, Any]], MCItem] | None = None
    hf_path: str | None = None
    hf_name: str | None = None
    build: Callable[[str, int, int], list[MCItem]] | None = None
    fields: tuple[str, ...] = field(default=())

    @property
    def offline(self) -> bool:
        """True for tasks generated from text (no download, no file)."""
        return self.build is not None

    @property
    def chance(self) -> float:
        """Accuracy of uniform random guessing, ``1 / n_choices``."""
        return 1.0 / self.n_choices


def _offline(name: str, description: str, n_choices: int, builder: Callable[..., list[MCItem]], **kw: Any) -> TaskSpec:
    """A :class:`TaskSpec` for a generated task with fixed generator settings."""

    def build(text: str, n_items: int, seed: int = 0) -> list[MCItem]:
        return builder(text, n_items=n_items, n_choices=n_choices, seed=seed, name=name, **kw)

    return TaskSpec(name, description, n_choices, build=build)


STANDARD_TASKS: dict[str, TaskSpec] = {
    "boolq": TaskSpec("boolq", "BoolQ yes/no questions on a passage", 2, convert_boolq, "aps/super_glue", "boolq",
                      fields=("passage", "question", "label|answer")),
    "piqa": TaskSpec("piqa", "PIQA physical commonsense, 2 solutions", 2, convert_piqa, "baber/piqa", None,
                     fields=("goal", "sol1", "sol2", "label")),
    "hellaswag": TaskSpec("hellaswag", "HellaSwag sentence completion, 4 endings", 4, convert_hellaswag, "Rowan/hellaswag",
                          None, fields=("activity_label", "ctx_a", "ctx_b", "endings", "label")),
    "winogrande": TaskSpec("winogrande", "WinoGrande pronoun resolution, partial scoring", 2, convert_winogrande,
                           "allenai/winogrande", "winogrande_xl", fields=("sentence", "option1", "option2", "answer")),
    "arc_easy": TaskSpec("arc_easy", "ARC-Easy science questions", 4, _arc("arc_easy"), "allenai/ai2_arc", "ARC-Easy",
                         fields=("question", "choices", "answerKey")),
    "arc_challenge": TaskSpec("arc_challenge", "ARC-Challenge science questions", 4, _arc("arc_challenge"),
                              "allenai/ai2_arc", "ARC-Challenge", fields=("question", "choices", "answerKey")),
    "openbookqa": TaskSpec("openbookqa", "OpenBookQA science questions (lm-eval scores its test split)", 4,
                           convert_openbookqa, "allenai/openbookqa", "main", fields=("question_stem", "choices", "answerKey")),
}

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

#: Every registered task, standard and offline.
TASKS: dict[str, TaskSpec] = {**STANDARD_TASKS, **OFFLINE_TASKS}


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` called ``name``; :class:`ConfigError` listing the names otherwise."""
    if name not in TASKS:
        raise ConfigError("task", name, f"one of {sorted(TASKS)}")
    return TASKS[name]


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------
def _unwrap_rows(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Records, unwrapping the dataset viewer's ``{"row": {...}}`` layout."""
    return [row["row"] if isinstance(row, Mapping) and set(row) >= {"row"} and isinstance(row["row"], Mapping) else row
            for row in rows]


def read_records(path: str | Path, split: str = "validation") -> list[dict[str, Any]]:
    """Read task records from a local file in the published format.

    Accepted: ``.jsonl`` (one JSON object a line), ``.json`` (a list of objects, or an object holding the
    list under ``split``, ``"data"`` or ``"rows"``), ``.parquet`` (as the ``datasets`` hub stores them).

    Args:
        path: the file.
        split: key to look under in a ``.json`` object that holds several splits.

    Returns:
        The records as dicts.

    Raises:
        ConfigError: missing file, unknown extension, or content that is not a list of objects.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError("task file", str(path), "an existing .jsonl, .json or .parquet file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows: Any = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        elif suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(rows, Mapping):
                rows = next((rows[k] for k in (split, "data", "rows") if isinstance(rows.get(k), list)), rows)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        else:
            raise ConfigError("task file", str(path), "a .jsonl, .json or .parquet file")
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        raise ConfigError("task file", str(path), "valid JSON lines / JSON / parquet", hint=str(error)[:200]) from error
    rows = _unwrap_rows(rows) if isinstance(rows, list) else rows
    if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
        raise ConfigError("task file", str(path), "a list of records (JSON objects)")
    return rows


def _load_hf(spec: TaskSpec, split: str) -> list[dict[str, Any]]:
    """Records of a standard task from ``datasets.load_dataset`` (needs network or a warm HF cache)."""
    try:
        import datasets

        dataset = datasets.load_dataset(spec.hf_path, spec.hf_name, split=split)
    except Exception as error:  # noqa: BLE001 - offline, missing split, hub errors: all end here
        raise ConfigError(
            f"task {spec.name}",
            f"datasets.load_dataset({spec.hf_path!r}, {spec.hf_name!r}, split={split!r})",
            "a dataset that can be downloaded (this needs network access)",
            hint=f"pass a local file in the published format: load_task({spec.name!r}, 'path/to/{spec.name}.jsonl') "
            f"or `--tasks {spec.name}=FILE` (fields: {', '.join(spec.fields)}). datasets said: "
            f"{type(error).__name__}: {str(error)[:200]}",
        ) from error
    return [dict(row) for row in dataset]


def load_task(
    name: str, path: str | Path | None = None, *, limit: int | None = None, split: str = "validation", seed: int = 0
) -> list[MCItem]:
    """Load a task's items.

    Standard tasks read ``path`` (a local ``.jsonl``/``.json``/``.parquet`` file in the task's published
    Hugging Face format, see :func:`read_records`) or, when ``path`` is ``None``, call
    ``datasets.load_dataset`` (needs network access; offline this raises a :class:`ConfigError` asking for
    a local file). Offline tasks build their items from the text file ``path`` (required).

    Args:
        name: a key of :data:`TASKS`.
        path: local file (see above).
        limit: keep the first ``limit`` records (offline tasks: build this many items, default 200).
        split: the ``datasets`` split, or the key of a multi-split ``.json`` file.
        seed: generator seed of offline tasks.

    Returns:
        The items, in file order.

    Raises:
        ConfigError: unknown task (the message lists the names), bad file, bad record, or no network.
    """
    spec = get_task(name)
    if limit is not None and limit < 1:
        raise ConfigError("limit", limit, "None or an integer >= 1")
    if spec.offline:
        if path is None:
            raise ConfigError(f"path of offline task {name}", None, "a text file to build the items from")
        assert spec.build is not None
        return spec.build(Path(path).expanduser().read_text(encoding="utf-8"), limit or 200, seed)
    records = read_records(path, split) if path is not None else _load_hf(spec, split)
    records = records[:limit] if limit is not None else records
    assert spec.convert is not None
    items = []
    for i, record in enumerate(records):
        try:
            items.append(spec.convert(record))
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, ConfigError):
                raise ConfigError(f"{name} record {i}", error.value, error.expected, error.hint) from error
            raise ConfigError(f"{name} record {i}", str(error), f"the fields {list(spec.fields)}") from error
    if not items:
        raise ConfigError(f"task {name}", str(path), "at least one record")
    return items


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
