"""Log-likelihood requests of multiple-choice items, built and scored as lm-eval's ``HFLM`` does.

:func:`choice_logliks` tokenises every (context, continuation) request like lm-eval (:func:`encode_pair`:
the context and the context + continuation are tokenised separately, trailing spaces of the context move onto
the continuation, an empty context becomes the BOS (else EOS) token, over-long inputs are truncated from the
left). Choices that share a context are packed into one sequence behind it (tree-shaped attention mask,
explicit positions), which gives lm-eval's numbers with the context run once, not once per choice.
:func:`score_multiple_choice` turns the log-likelihoods into acc / acc_norm with standard errors.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adapruner_lightning.data.text import uses_bos
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.evaluation.metrics import MultipleChoiceAccuracy, model_device, multiple_choice_tensors
from adapruner_lightning.progress import progress_bar

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from adapruner_lightning.evaluation.items import ContinuationItem, MCItem


#: Context length assumed when neither the model config nor the tokenizer names one (lm-eval's default).
DEFAULT_MAX_LENGTH = 2048






def model_max_length(model: nn.Module, tokenizer: Any = None) -> int:
    """The longest input ``model`` accepts, found as lm-eval's ``HFLM.max_length`` finds it.

    Args:
        model: a Hugging Face model (its ``config`` is read).
        tokenizer: optional tokenizer; its ``model_max_length`` is used when the config names no length.

    Returns:
        The first of ``n_positions``, ``max_position_embeddings``, ``n_ctx`` in the model config, else the
        tokenizer's ``model_max_length`` when it is a real value, else :data:`DEFAULT_MAX_LENGTH`.
    """
    config = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 1_000_000_000:
        return value
    return DEFAULT_MAX_LENGTH


def _encode(tokenizer: Any, text: str, add_special_tokens: bool | None) -> list[int]:
    """Token ids of ``text``; ``add_special_tokens=None`` keeps the tokenizer's default (lm-eval >= 0.4.9).

    As lm-eval's ``HFLM.tok_encode``: with the default, a text that already starts with the BOS string
    gets no second BOS. With the default, a model that expects BOS (:func:`~adapruner_lightning.data.text.uses_bos`:
    Gemma tokenizers even when their default adds none) gets one.
    """
    kwargs: dict[str, bool] = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
    bos = getattr(tokenizer, "bos_token", None)
    if add_special_tokens is None and isinstance(bos, str) and bos and text.startswith(bos):
        kwargs = {"add_special_tokens": False}
    ids = list(tokenizer(text, verbose=False, **kwargs)["input_ids"])
    if not kwargs and uses_bos(tokenizer) and (not ids or ids[0] != tokenizer.bos_token_id):
        ids.insert(0, int(tokenizer.bos_token_id))
    return ids


def _prefix_token_id(tokenizer: Any) -> int:
    """The token standing in for an empty context: BOS if the tokenizer has one, else EOS (as lm-eval)."""
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise ConfigError("tokenizer", type(tokenizer).__name__, "a tokenizer with a BOS or EOS token for empty contexts")


def encode_pair(
    tokenizer: Any, context: str, continuation: str, add_special_tokens: bool | None = None
) -> tuple[list[int], list[int]]:
    """Tokenise a (context, continuation) request as lm-eval's ``loglikelihood`` / ``_encode_pair`` do.

    Trailing whitespace of ``context`` moves to the start of ``continuation``; then ``context`` and
    ``context + continuation`` are tokenised and the continuation's tokens are the tail of the whole
    beyond the context's length. An empty context becomes the BOS (else EOS) token, unless the
    continuation already starts with that token (then its first token is the context).

    Args:
        tokenizer: a Hugging Face tokenizer.
        context: the conditioning text.
        continuation: the scored text, with its leading space (``" yes"``).
        add_special_tokens: passed to the tokenizer for the context and the whole; ``None`` keeps the
            tokenizer's default (lm-eval's ``HFLM`` default since 0.4.9: Llama-style tokenizers add BOS).

    Returns:
        ``(context_ids, continuation_ids)``.
    """
    if not context:
        cont = _encode(tokenizer, continuation, False)
        prefix = _prefix_token_id(tokenizer)
        return ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    if not context:  # the context was only whitespace: lm-eval asserts here; score after BOS instead
        return encode_pair(tokenizer, "", continuation, add_special_tokens)
    whole = _encode(tokenizer, context + continuation, add_special_tokens)
    context_ids = _encode(tokenizer, context, add_special_tokens)
    return context_ids, whole[len(context_ids) :]


def _pad_id(tokenizer: Any) -> int:
    """Token id used for right padding (its value never matters: padded positions are masked and unread)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


@torch.no_grad()
def _score_batch(
    model: nn.Module, batch: list[tuple[list[int], int]], pad_id: int, device: torch.device
) -> list[tuple[float, bool]]:
    """Summed log-probability of the last ``n_cont`` tokens of each ``(tokens, n_cont)`` sequence, and whether
    each of them is the arg-max prediction (lm-eval's ``is_greedy``)."""
    inputs = [tokens[:-1] for tokens, _ in batch]
    width = max(len(x) for x in inputs)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(inputs):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
    scores = []
    for row, (tokens, n_cont) in enumerate(batch):
        n_in = len(tokens) - 1
        logprobs = F.log_softmax(logits[row, n_in - n_cont : n_in].float(), dim=-1)
        target = torch.tensor(tokens[-n_cont:], dtype=torch.long, device=logprobs.device)
        if not n_cont:
            scores.append((0.0, True))
            continue
        greedy = bool((logprobs.argmax(dim=-1) == target).all())
        scores.append((float(logprobs.gather(1, target[:, None]).sum()), greedy))
    return scores


def _accepts(model: nn.Module, name: str) -> bool:
    """True when ``model.forward`` names the keyword ``name`` (a generic ``**kwargs`` does not count)."""
    return name in inspect.signature(model.forward).parameters


def _pack(context: list[int], conts: list[list[int]]) -> tuple[list[int], list[int], list[int], list[list[int]]]:
    """One item as a single sequence: the context, then every choice's ``continuation[:-1]``.

    Returns the tokens, their positions (each choice continues the context), their segment (-1 for the
    context, ``j`` for choice ``j``) and, per choice, the index of the token whose logits predict each of
    its continuation tokens (the context's last token for the first one).
    """
    tokens, positions, segments = list(context), list(range(len(context))), [-1] * len(context)
    predictors = []
    for j, cont in enumerate(conts):
        start = len(tokens)
        predictors.append([len(context) - 1, *range(start, start + len(cont) - 1)])
        tokens += cont[:-1]
        positions += range(len(context), len(context) + len(cont) - 1)
        segments += [j] * (len(cont) - 1)
    return tokens, positions, segments, predictors


def _tree_mask(segments: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive ``[batch, 1, width, width]`` mask: a token sees earlier context tokens and earlier tokens
    of its own choice (segment -1 is the context, -2 padding, which sees only itself)."""
    width = segments.shape[1]
    index = torch.arange(width)
    causal = index[None, :] <= index[:, None]
    keys, queries = segments[:, None, :], segments[:, :, None]
    allowed = causal & ((keys == -1) | (keys == queries)) & (queries != -2)
    allowed |= torch.eye(width, dtype=torch.bool)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


@torch.no_grad()
def _score_shared(
    model: nn.Module, jobs: list[tuple[list[int], list[list[int]]]], pad_id: int, device: torch.device
) -> list[list[float]]:
    """Score the choices of several items whose choices share one context, each context run once.

    Every item becomes one sequence (:func:`_pack`): its context followed by all its choices, each choice
    placed at the positions that continue the context and masked (:func:`_tree_mask`) so that it sees the
    context and itself, never another choice. The items run as one left-padded batch, so logits are only
    computed for the last positions, where the choices are. The numbers equal
    scoring each ``context + continuation`` on its own up to float rounding (``choice_logliks`` checks one
    item against that), with the context computed once instead of once per choice.
    """
    packed = [_pack(context, conts) for context, conts in jobs]
    width = max(len(tokens) for tokens, *_ in packed)
    input_ids = torch.full((len(jobs), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(jobs), width), dtype=torch.long)
    segments = torch.full((len(jobs), width), -2, dtype=torch.long)
    for row, (tokens, pos, seg, _) in enumerate(packed):  # left-padded: every row's choices end the batch
        input_ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
        positions[row, width - len(tokens) :] = torch.tensor(pos, dtype=torch.long)
        segments[row, width - len(tokens) :] = torch.tensor(seg, dtype=torch.long)
    dtype = next(model.parameters()).dtype
    # only the context's last token and the choices need logits: the last `keep` positions of every row
    keep = max(len(tokens) - len(context) + 1 for (tokens, *_), (context, _) in zip(packed, jobs))
    extra = {"logits_to_keep": keep} if _accepts(model, "logits_to_keep") else {}
    logits = model(input_ids=input_ids.to(device), position_ids=positions.to(device),
                   attention_mask=_tree_mask(segments, dtype).to(device), use_cache=False, **extra).logits
    scores = []
    for row, ((_, conts), (tokens, *_, predictors)) in enumerate(zip(jobs, packed)):
        shift = width - len(tokens) - (width - logits.shape[1])  # packed index -> row of the kept logits
        item_scores = []
        for cont, index in zip(conts, predictors):
            logprobs = F.log_softmax(logits[row, torch.tensor(index) + shift].float(), dim=-1)
            target = torch.tensor(cont, dtype=torch.long, device=logprobs.device)
            item_scores.append(float(logprobs.gather(1, target[:, None]).sum()))
        scores.append(item_scores)
    return scores


def _can_share(pairs: list[tuple[list[int], list[int]]], max_length: int) -> bool:
    """True when every choice has the same context (>= 2 tokens), a continuation, and no truncation."""
    context = pairs[0][0]
    return (
        len(pairs) > 1
        and len(context) >= 2
        and all(ctx == context and cont for ctx, cont in pairs)
        and len(context) + max(len(cont) for _, cont in pairs) - 1 <= max_length
    )


@torch.no_grad()
def choice_logliks(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[MCItem],
    *,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = True,
    max_length: int | None = None,
    share_context: bool = True,
    add_special_tokens: bool | None = None,
) -> list[list[float]]:
    """Summed log-probability of each choice's continuation given its context, as lm-eval computes it.

    Every ``(context, continuation)`` request of every item (see :meth:`MCItem.requests`) is tokenised by
    :func:`encode_pair`, truncated from the left to ``max_length`` tokens, and scored in batches sorted
    by length, right-padded with an attention mask. With ``share_context``, an item whose choices share
    one context (all but partial-scoring items) is packed into one sequence, its context followed by its
    choices, with a tree-shaped attention mask and positions so that each choice sees only the context
    and itself: the same numbers up to float rounding, the context computed once instead of once per
    choice. The first packed item is also scored the plain way; if they disagree (a model that ignores
    custom 4D masks or ``position_ids``), a warning says so and every item is scored the plain way. The
    model runs in eval mode and gets its previous mode back.

    Args:
        model: a causal LM returning ``.logits`` (and accepting a 4D float ``attention_mask`` and
            ``position_ids`` for ``share_context``, as Hugging Face decoders do).
        tokenizer: its tokenizer.
        items: the multiple-choice items.
        batch_size: sequences per forward pass (packed items count one each).
        device: where to run; the model is moved there. ``None``: where the model's weights are.
        progress: show a progress bar.
        max_length: longest input; default :func:`model_max_length`.
        share_context: pack the choices of a shared context (``False``: lm-eval's plain batched path for
            every item).
        add_special_tokens: see :func:`encode_pair` (``None``: the tokenizer's default, as lm-eval).

    Returns:
        For each item, one log-likelihood per choice, in the items' order.
    """
    if batch_size < 1:
        raise ConfigError("batch_size", batch_size, "an integer >= 1")
    device = model_device(model, device)
    max_length = max_length or model_max_length(model, tokenizer)
    pad_id = _pad_id(tokenizer)
    share_limit = min(max_length, getattr(getattr(model, "config", None), "sliding_window", None) or max_length)
    shared, plain = _plan_requests(tokenizer, items, max_length, share_limit if share_context else 0, add_special_tokens)
    out: list[list[float]] = [[0.0] * len(item.choices) for item in items]

    def run_shared(group: list[int]) -> None:
        scores = _score_shared(model, [(shared[k][1], shared[k][2]) for k in group], pad_id, device)
        for k, item_scores in zip(group, scores):
            out[shared[k][0]] = item_scores

    def run_plain(chunk: list[int]) -> None:
        scores = _score_batch(model, [(plain[k][2], plain[k][3]) for k in chunk], pad_id, device)
        for k, (score, _) in zip(chunk, scores):
            out[plain[k][0]][plain[k][1]] = score

    was_training = model.training
    model.eval()
    try:
        if shared and not _packing_agrees(model, shared[0], pad_id, device):
            log.warning("%s does not score packed choices like separate sequences (custom 4D attention masks or "
                        "position_ids unsupported); scoring every item the plain way", type(model).__name__)
            plain += [_plain_request(i, j, context, cont, max_length) for i, context, conts in shared
                      for j, cont in enumerate(conts)]
            shared = []
        order = sorted(range(len(plain)), key=lambda k: -len(plain[k][2]))  # longest first, as lm-eval
        jobs: list[Callable[[], None]] = [functools.partial(run_shared, g) for g in _shared_groups(shared, batch_size)]
        jobs += [functools.partial(run_plain, order[k : k + batch_size]) for k in range(0, len(order), batch_size)]
        for job in progress_bar(jobs, "choice log-likelihoods", enabled=progress):
            job()
    finally:
        model.train(was_training)
    return out


def _shared_groups(shared: list[tuple[int, list[int], list[list[int]]]], batch_size: int) -> list[list[int]]:
    """Indices of ``shared`` jobs, ``batch_size`` at a time, longest packed sequence first (little padding)."""
    order = sorted(range(len(shared)), key=lambda k: -(len(shared[k][1]) + sum(len(c) - 1 for c in shared[k][2])))
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def _packing_agrees(model: nn.Module, job: tuple[int, list[int], list[list[int]]], pad_id: int, device: torch.device) -> bool:
    """True when the packed scores of one shared-context job equal its plain scores (within 1e-3 relative)."""
    _, context, conts = job
    packed = _score_shared(model, [(context, conts)], pad_id, device)[0]
    plain = _score_batch(model, [(context + cont, len(cont)) for cont in conts], pad_id, device)
    return all(abs(a - b) <= 1e-3 * max(1.0, abs(b)) for a, (b, _) in zip(packed, plain))


def _plain_request(item: int, choice: int, context: list[int], cont: list[int], max_length: int) -> tuple[int, int, list[int], int]:
    """``(item, choice, tokens truncated from the left to max_length + 1, n_continuation_tokens)``."""
    tokens = (context + cont)[-(max_length + 1) :]
    return item, choice, tokens, min(len(cont), len(tokens) - 1)


def _plan_requests(
    tokenizer: Any, items: Sequence[MCItem], max_length: int, share_limit: int, add_special_tokens: bool | None
) -> tuple[list[tuple[int, list[int], list[list[int]]]], list[tuple[int, int, list[int], int]]]:
    """Tokenise every request; return the shared-context jobs ``(item, context, continuations)`` (items
    whose choices fit in ``share_limit`` tokens; 0 shares none) and the plain requests (:func:`_plain_request`)."""
    shared: list[tuple[int, list[int], list[list[int]]]] = []
    plain: list[tuple[int, int, list[int], int]] = []
    for i, item in enumerate(items):
        pairs = [encode_pair(tokenizer, c, k, add_special_tokens) for c, k in item.requests()]
        if share_limit and _can_share(pairs, share_limit):
            shared.append((i, pairs[0][0], [cont for _, cont in pairs]))
            continue
        plain += [_plain_request(i, j, context, cont, max_length) for j, (context, cont) in enumerate(pairs)]
    return shared, plain


def _stderr(p: float, n: int) -> float:
    """Standard error of a mean of ``n`` 0/1 scores with mean ``p`` (lm-eval's sample-stddev formula)."""
    return math.sqrt(p * (1.0 - p) / (n - 1)) if n > 1 else float("nan")


def score_multiple_choice(model: nn.Module, tokenizer: Any, items: Sequence[MCItem], **kw: Any) -> dict[str, float]:
    """Zero-shot accuracy of ``model`` on ``items`` (local to this process, no cross-rank sync).

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        items: the multiple-choice items.
        **kw: passed to :func:`choice_logliks` (``batch_size``, ``device``, ``progress``, ``max_length``,
            ``share_context``, ``add_special_tokens``).

    Returns:
        ``{"acc", "acc_norm", "acc_stderr", "acc_norm_stderr", "n"}``.

    Raises:
        ConfigError: ``items`` is empty.
    """
    if not items:
        raise ConfigError("items", [], "at least one multiple-choice item")
    return multiple_choice_metrics(items, choice_logliks(model, tokenizer, items, **kw))


def multiple_choice_metrics(items: Sequence[MCItem], logliks: Sequence[Sequence[float]]) -> dict[str, float]:
    """lm-eval's multiple-choice metrics from per-choice log-likelihoods (as :func:`choice_logliks` returns them).

    Returns:
        ``{"acc", "acc_norm", "acc_stderr", "acc_norm_stderr", "n"}``.
    """
    metric = MultipleChoiceAccuracy(sync_on_compute=False)
    metric.update(*multiple_choice_tensors(items, logliks))
    result = {name: float(value) for name, value in metric.compute().items()}
    n = len(items)
    return {
        "acc": result["acc"],
        "acc_norm": result["acc_norm"],
        "acc_stderr": _stderr(result["acc"], n),
        "acc_norm_stderr": _stderr(result["acc_norm"], n),
        "n": float(n),
    }


@torch.no_grad()
def continuation_scores(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[ContinuationItem],
    *,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = True,
    max_length: int | None = None,
    add_special_tokens: bool | None = None,
) -> list[tuple[float, bool]]:
    """Log-likelihood of each item's continuation and whether it is the greedy one, as lm-eval's ``loglikelihood``.

    Requests are tokenised by :func:`encode_pair`, truncated from the left to ``max_length`` tokens and
    scored longest first in right-padded batches (the plain path of :func:`choice_logliks`). The model runs
    in eval mode and gets its previous mode back.

    Args:
        model: a causal LM returning ``.logits``.
        tokenizer: its tokenizer.
        items: the log-likelihood items.
        batch_size: sequences per forward pass.
        device: where to run (``None``: where the weights are).
        progress: show a progress bar.
        max_length: longest input; default :func:`model_max_length`.
        add_special_tokens: see :func:`encode_pair`.

    Returns:
        ``(log-likelihood, is_greedy)`` per item, in the items' order.
    """
    if batch_size < 1:
        raise ConfigError("batch_size", batch_size, "an integer >= 1")
    device = model_device(model, device)
    max_length = max_length or model_max_length(model, tokenizer)
    pad_id = _pad_id(tokenizer)
    requests = [_plain_request(i, 0, *encode_pair(tokenizer, *item.requests()[0], add_special_tokens), max_length)
                for i, item in enumerate(items)]
    order = sorted(range(len(requests)), key=lambda k: -len(requests[k][2]))
    out: list[tuple[float, bool]] = [(0.0, False)] * len(items)
    was_training = model.training
    model.eval()
    try:
        chunks = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
        for chunk in progress_bar(chunks, "continuation log-likelihoods", enabled=progress):
            for k, score in zip(chunk, _score_batch(model, [requests[k][2:] for k in chunk], pad_id, device)):
                out[k] = score
    finally:
        model.train(was_training)
    return out


def score_loglikelihood(model: nn.Module, tokenizer: Any, items: Sequence[ContinuationItem], **kw: Any) -> dict[str, float]:
    """lm-eval's metrics of a log-likelihood task (LAMBADA): greedy accuracy and perplexity.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        items: the items.
        **kw: passed to :func:`continuation_scores`.

    Returns:
        ``{"acc", "acc_stderr", "perplexity", "n"}``: the share of items whose continuation is the greedy
        one, and ``exp(-mean log-likelihood)`` over the items (lm-eval's ``perplexity`` aggregation: per
        item, not per token).

    Raises:
        ConfigError: ``items`` is empty.
    """
    if not items:
        raise ConfigError("items", [], "at least one log-likelihood item")
    return loglikelihood_metrics(continuation_scores(model, tokenizer, items, **kw))


def loglikelihood_metrics(scores: Sequence[tuple[float, bool]]) -> dict[str, float]:
    """lm-eval's log-likelihood metrics from ``(log-likelihood, is_greedy)`` pairs (:func:`continuation_scores`).

    Returns:
        ``{"acc", "acc_stderr", "perplexity", "n"}`` (perplexity per item, as lm-eval aggregates it).

    Raises:
        ConfigError: ``scores`` is empty.
    """
    if not scores:
        raise ConfigError("log-likelihood scores", [], "at least one scored item")
    n = len(scores)
    acc = sum(greedy for _, greedy in scores) / n
    return {"acc": acc, "acc_stderr": _stderr(acc, n), "perplexity": math.exp(-sum(ll for ll, _ in scores) / n),
            "n": float(n)}
