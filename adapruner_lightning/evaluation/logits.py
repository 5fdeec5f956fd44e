"""Next-token losses without the full-vocabulary logits: the decoder once, the output head chunk by chunk.

A causal LM's ``forward`` returns ``[B, T, V]`` logits; with a 128k vocabulary and 8 x 256 tokens that is 1 GiB in
bf16 and 2 GiB once cast to float32 for the loss, more than the activations of a 7B model's whole decoder.
:func:`split_model` separates the decoder from the head (with the family's logit scaling or soft-capping), and
:func:`summed_nll` / :func:`backward_summed_nll` run the head on slices of the sequence of at most
``LOGIT_CHUNK_ELEMENTS`` logits each, in float32. The backward variant backpropagates each slice into a detached
copy of the hidden states and then the decoder once, so peak memory is one slice of logits, not ``B x T x V``.
Families whose head is unknown fall back to the model's own ``forward`` (correct, not chunked).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Logits per slice: 16 MiB in float32, about 64 MiB with the bf16 head output, log-softmax and gradients.
LOGIT_CHUNK_ELEMENTS = 2**22

Head = Callable[[Tensor], Tensor]


def split_model(model: nn.Module) -> tuple[nn.Module, Head] | None:
    """``(decoder, head)`` with ``head(decoder(input_ids).last_hidden_state) == model(input_ids).logits``, or None.

    Knows Hugging Face causal LMs whose forward is ``lm_head`` after the decoder, optionally divided by
    ``config.logits_scaling`` (Granite) or soft-capped by ``config.final_logit_softcapping`` (Gemma 2/3).
    """
    get_decoder = getattr(model, "get_decoder", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is None or head is None or decoder is model:
        return None
    scaling = getattr(model.config, "logits_scaling", None)
    cap = getattr(model.config, "final_logit_softcapping", None)

    def logits(hidden: Tensor) -> Tensor:
        out = head(hidden)
        if scaling:
            out = out / scaling
        if cap:
            out = torch.tanh(out / cap) * cap
        return out

    return decoder, logits


def _slices(batch: Tensor, vocab: int) -> list[tuple[slice, slice]]:
    """(rows, positions) slices of the ``[B, T - 1]`` predicted positions with at most LOGIT_CHUNK_ELEMENTS logits
    each: whole rows grouped while they fit, else one row cut along the sequence."""
    rows, positions = batch.shape[0], batch.shape[1] - 1
    per_row = positions * vocab
    if per_row <= LOGIT_CHUNK_ELEMENTS:
        step = LOGIT_CHUNK_ELEMENTS // per_row
        return [(slice(r, r + step), slice(0, positions)) for r in range(0, rows, step)]
    step = max(1, LOGIT_CHUNK_ELEMENTS // vocab)
    return [(slice(r, r + 1), slice(p, min(p + step, positions))) for r in range(rows) for p in range(0, positions, step)]


def _slice_nll(head: Head, hidden: Tensor, batch: Tensor, rows: slice, positions: slice) -> Tensor:
    # one [tokens, hidden] matrix (a copy of the slice): the head is then one GEMM, not a batched one
    logits = head(hidden[rows, positions].reshape(-1, hidden.shape[-1])).float()
    targets = batch[rows, positions.start + 1:positions.stop + 1]
    return F.cross_entropy(logits, targets.flatten(), reduction="sum")


def _vocab(model: nn.Module) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def summed_nll(model: nn.Module, batch: Tensor) -> Tensor:
    """Summed next-token NLL of ``batch`` ([B, T] token ids, every position scored), float32, with autograd.

    Under ``torch.no_grad()`` (evaluation) at most one slice of float32 logits is alive at a time; with gradients
    use :func:`backward_summed_nll`, which keeps memory bounded through the backward too.
    """
    parts = split_model(model)
    if parts is None:
        logits = model(input_ids=batch, use_cache=False).logits.float()
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
    decoder, head = parts
    hidden = decoder(input_ids=batch, use_cache=False).last_hidden_state
    return sum(_slice_nll(head, hidden, batch, r, p) for r, p in _slices(batch, _vocab(model)))


def backward_summed_nll(model: nn.Module, batch: Tensor, scale: float = 1.0) -> float:
    """Backpropagate ``scale`` x :func:`summed_nll` of ``batch`` (gradients accumulate as with ``loss.backward()``).

    The head runs one slice at a time and each slice is backpropagated at once into a detached copy of the
    decoder's output, so at most one slice of float32 logits and its gradient are alive; the decoder is then
    backpropagated once with the collected gradient. Returns the scaled loss.
    """
    parts = split_model(model)
    if parts is None:
        loss = summed_nll(model, batch) * scale
        loss.backward()
        return float(loss.detach())
    decoder, head = parts
    hidden = decoder(input_ids=batch, use_cache=False).last_hidden_state
    detached = hidden.detach().requires_grad_(True)
    total = torch.zeros((), dtype=torch.float32, device=batch.device)
    for rows, positions in _slices(batch, _vocab(model)):
        loss = _slice_nll(head, detached, batch, rows, positions) * scale
        loss.backward()
        total += loss.detach()
    if hidden.requires_grad and detached.grad is not None:
        hidden.backward(detached.grad)
    return float(total)
