"""Log-likelihood tasks (LAMBADA): per-item log-likelihood, greedy accuracy and lm-eval's perplexity."""

from __future__ import annotations

import math

import pytest
import torch
from helpers_eval import hand_loglik, synthetic_text, tiny_model, tiny_tokenizer

from adapruner_lightning.errors import ConfigError
from adapruner_lightning.evaluation.evaluate import EvalResult, score_task
from adapruner_lightning.evaluation.items import ContinuationItem
from adapruner_lightning.evaluation.loglik import continuation_scores, encode_pair, score_loglikelihood


def _items(n: int = 10) -> list[ContinuationItem]:
    words = synthetic_text(20, seed=3).split(" ")
    return [ContinuationItem(" ".join(words[5 * k : 5 * k + 4 + k % 5]), words[5 * k + 4 + k % 5].strip(".,!?") or "x",
                             task="lambada_openai") for k in range(n)]


def _greedy_by_hand(model, context: list[int], cont: list[int]) -> bool:
    tokens = torch.tensor([context + cont])
    with torch.no_grad():
        logits = model(input_ids=tokens).logits[0]
    return bool((logits[len(context) - 1 : -1].argmax(-1) == torch.tensor(cont)).all())


@pytest.mark.parametrize("add_bos", [False, True])
def test_loglik_and_greedy_equal_a_direct_computation(add_bos: bool) -> None:
    tok, model = tiny_tokenizer(add_bos=add_bos), tiny_model(seed=1)
    items = _items()
    got = continuation_scores(model, tok, items, batch_size=3, progress=False)
    for item, (ll, greedy) in zip(items, got):
        context, cont = encode_pair(tok, *item.requests()[0])
        assert ll == pytest.approx(hand_loglik(model, context, cont), abs=1e-4)
        assert greedy == _greedy_by_hand(model, context, cont)
    scores = score_loglikelihood(model, tok, items, batch_size=4, progress=False)
    assert scores["acc"] == sum(g for _, g in got) / len(items)
    assert scores["perplexity"] == pytest.approx(math.exp(-sum(ll for ll, _ in got) / len(items)))
    assert scores["n"] == len(items)


def test_a_model_that_copies_gets_every_item_right() -> None:
    """Greedy accuracy can reach 1: a model whose logits put all mass on the true next token."""
    tok = tiny_tokenizer()
    items = _items(6)
    targets = {}
    for item in items:
        context, cont = encode_pair(tok, *item.requests()[0])
        targets[tuple(context + cont[:-1])] = context + cont

    class Oracle(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, use_cache=False, **_):
            logits = torch.full((*input_ids.shape, len(tok)), -10.0)
            for row, ids in enumerate(input_ids.tolist()):
                full = next(v for k, v in targets.items() if list(k) == ids[: len(k)])
                for pos, nxt in enumerate(full[1:]):
                    logits[row, pos, nxt] = 10.0
            return type("Out", (), {"logits": logits})()

    model = Oracle()
    model.register_parameter("w", torch.nn.Parameter(torch.zeros(1)))
    scores = score_loglikelihood(model, tok, items, batch_size=2, progress=False, max_length=512)
    assert scores["acc"] == 1.0 and scores["perplexity"] < 1.01


def test_score_task_dispatches_on_the_kind_and_the_mean_skips_loglikelihood_tasks() -> None:
    tok, model = tiny_tokenizer(), tiny_model(seed=1)
    scores = score_task(model, tok, "lambada_openai", _items(4), progress=False)
    assert set(scores) == {"acc", "acc_stderr", "perplexity", "n", "chance"} and scores["chance"] == 0.0
    result = EvalResult(zeroshot={"lambada_openai": scores, "piqa": {"acc": 0.5, "acc_norm": 0.25}})
    assert result.mean_accuracy() == 0.5 and result.mean_accuracy("acc_norm") == 0.25
    with pytest.raises(ConfigError, match="at least one"):
        score_loglikelihood(model, tok, [], progress=False)
    with pytest.raises(ConfigError, match="non-empty"):
        ContinuationItem("context", "")


def test_loglikelihood_metrics_match_lm_eval_aggregation_and_refuse_no_scores() -> None:
    from adapruner_lightning.evaluation.loglik import loglikelihood_metrics

    m = loglikelihood_metrics([(-1.0, True), (-3.0, False)])
    assert m["acc"] == 0.5 and m["n"] == 2.0 and abs(m["perplexity"] - math.exp(2.0)) < 1e-12
    with pytest.raises(ConfigError, match="at least one scored item"):
        loglikelihood_metrics([])
