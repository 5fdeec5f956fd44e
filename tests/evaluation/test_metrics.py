"""Perplexity and multiple-choice metrics against hand computations, on tiny random models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.multiprocessing as mp
from helpers_eval import ddp_metrics_worker, free_port, hand_loglik, hand_nll, tiny_model, tiny_tokenizer

from adapruner_lightning.errors import ConfigError
from adapruner_lightning.evaluation.metrics import MultipleChoiceAccuracy, Perplexity, causal_lm_nll, evaluate_perplexity, item_correctness, multiple_choice_tensors
from adapruner_lightning.evaluation.loglik import choice_logliks, encode_pair, score_multiple_choice
from adapruner_lightning.evaluation.items import MCItem


def _random_lm_batch(seed: int = 0, b: int = 4, t: int = 7, v: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=gen) * 3
    labels = torch.randint(0, v, (b, t), generator=gen)
    labels[0, 3] = -100
    labels[2, :4] = -100
    return logits, labels


# ------------------------------------------------------------------------------------------- perplexity
def test_perplexity_is_exp_of_hand_computed_mean_nll() -> None:
    logits, labels = _random_lm_batch()
    total, count = hand_nll(logits, labels)
    metric = Perplexity()
    metric.update(logits[:2], labels[:2])
    metric.update(logits[2:], labels[2:])
    assert int(metric.token_count) == count == 4 * 6 - 1 - 3
    assert metric.nll_sum.dtype == torch.float64 and metric.token_count.dtype == torch.long
    assert float(metric.compute()) == pytest.approx(math.exp(total / count), rel=1e-5)


def test_perplexity_update_nll_matches_update_and_hf_loss() -> None:
    logits, labels = _random_lm_batch(seed=1)
    nll, count = causal_lm_nll(logits, labels)
    a, b = Perplexity(), Perplexity()
    a.update(logits, labels)
    b.update_nll(nll, int(count))
    assert torch.allclose(a.compute(), b.compute())
    # HF's mean loss over the same shifted tokens
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert float(a.compute()) == pytest.approx(math.exp(float(loss)), rel=1e-5)


def test_perplexity_without_tokens_raises_clear_error() -> None:
    metric = Perplexity()
    metric.update(torch.randn(1, 3, 5), torch.full((1, 3), -100))
    with pytest.raises(ConfigError, match="scored token"):
        metric.compute()


def test_perplexity_rejects_mismatched_shapes() -> None:
    with pytest.raises(ConfigError, match="shapes"):
        Perplexity().update(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def test_evaluate_perplexity_matches_hand_and_restores_mode() -> None:
    model = tiny_model(vocab_size=50)
    windows = torch.randint(0, 50, (5, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=windows, use_cache=False).logits
    total, count = hand_nll(logits, windows)
    model.train()
    value = evaluate_perplexity(model, windows, batch_size=2, progress=False)
    assert model.training
    assert value == pytest.approx(math.exp(total / count), rel=1e-4)
    model.eval()
    assert evaluate_perplexity(model, windows, batch_size=5, progress=True) == pytest.approx(value, rel=1e-5)
    assert not model.training


@pytest.mark.parametrize("bad", [torch.zeros(0, 8, dtype=torch.long), torch.zeros(3, 1, dtype=torch.long),
                                 torch.zeros(8, dtype=torch.long), torch.zeros(2, 8)])
def test_evaluate_perplexity_rejects_bad_windows(bad: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match="windows"):
        evaluate_perplexity(tiny_model(vocab_size=20), bad, progress=False)


# ------------------------------------------------------------------------------------ multiple choice
def test_acc_norm_differs_from_acc_on_constructed_case() -> None:
    metric = MultipleChoiceAccuracy()
    # item 0: raw favours choice 0 (-10 > -12) but per character choice 1 wins (-12/20 > -10/5); gold = 1
    # item 1: both pick choice 2 (gold); the padded 4th choice would win if it were not masked
    logliks = torch.tensor([[-10.0, -12.0, -30.0, 0.0], [-9.0, -8.0, -2.0, 5.0]])
    lengths = torch.tensor([[5, 20, 10, 1], [10, 10, 10, 1]])
    valid = torch.tensor([[True, True, True, False], [True, True, True, False]])
    metric.update(logliks, lengths, torch.tensor([1, 2]), valid)
    result = metric.compute()
    assert float(result["acc"]) == pytest.approx(0.5)
    assert float(result["acc_norm"]) == pytest.approx(1.0)


def test_mc_accuracy_rejects_gold_on_padding_and_empty_compute() -> None:
    metric = MultipleChoiceAccuracy()
    with pytest.raises(ConfigError, match="gold"):
        metric.update(torch.zeros(1, 3), torch.ones(1, 3), torch.tensor([2]), torch.tensor([[True, True, False]]))
    with pytest.raises(ConfigError, match="at least one"):
        metric.compute()


def test_encode_pair_follows_lm_eval_conventions() -> None:
    tok = tiny_tokenizer()
    ctx, cont = encode_pair(tok, "Anne walked to Bath ", "with great composure")
    assert ctx == tok("Anne walked to Bath", add_special_tokens=False)["input_ids"]
    whole = tok("Anne walked to Bath with great composure", add_special_tokens=False)["input_ids"]
    assert ctx + cont == whole
    empty_ctx, cont2 = encode_pair(tok, "", " Anne")
    assert empty_ctx == [tok.bos_token_id] and cont2 == tok(" Anne", add_special_tokens=False)["input_ids"]


def test_encode_pair_keeps_the_tokenizers_default_bos_like_lm_eval() -> None:
    plain, with_bos = tiny_tokenizer(), tiny_tokenizer(add_bos=True)
    ctx, cont = encode_pair(with_bos, "Anne walked to", " Bath")
    assert ctx[0] == with_bos.bos_token_id and ctx[1:] == encode_pair(plain, "Anne walked to", " Bath")[0]
    assert cont == encode_pair(plain, "Anne walked to", " Bath")[1]
    assert encode_pair(with_bos, "Anne walked to", " Bath", add_special_tokens=False) == encode_pair(plain, "Anne walked to", " Bath")
    assert encode_pair(with_bos, "<|endoftext|>Anne", " Bath")[0].count(with_bos.bos_token_id) == 1
    # empty context whose continuation starts with the prefix token: that token becomes the context
    assert encode_pair(plain, "", "<|endoftext|> Anne") == ([plain.bos_token_id], plain(" Anne")["input_ids"])


def _items() -> list[MCItem]:
    return [
        MCItem("Anne walked to Bath", ("with great composure", "and the evening was fine", "Mary"), 1),
        MCItem("Charles spoke of", ("Lyme", "the Cobb"), 0),
        MCItem("", ("Louisa walked to Lyme", "Louisa walked to Bath"), 1, partial=True, continuation="before the rain began"),
        MCItem("Walter", ("remembered Kellynch", "dined"), 0),
    ]


@pytest.mark.parametrize("share_context", [True, False])
def test_choice_logliks_equal_hand_log_softmax(share_context: bool) -> None:
    tok, model = tiny_tokenizer(), tiny_model()
    items = _items()
    got = choice_logliks(model, tok, items, batch_size=3, progress=False, share_context=share_context)
    for item, lls in zip(items, got):
        for (context, continuation), ll in zip(item.requests(), lls):
            assert ll == pytest.approx(hand_loglik(model, *encode_pair(tok, context, continuation)), abs=1e-4)
    # the first item by hand from the raw strings: context tokens, then the tail that differs
    ctx = tok("Anne walked to Bath", add_special_tokens=False)["input_ids"]
    whole = tok("Anne walked to Bath and the evening was fine", add_special_tokens=False)["input_ids"]
    assert got[0][1] == pytest.approx(hand_loglik(model, ctx, whole[len(ctx):]), abs=1e-4)


def test_choice_logliks_batch_size_and_sharing_do_not_change_results() -> None:
    tok, model = tiny_tokenizer(), tiny_model(seed=3)
    items = _items()
    one = choice_logliks(model, tok, items, batch_size=1, progress=False, share_context=False)
    many = choice_logliks(model, tok, items, batch_size=16, progress=False, share_context=False)
    shared = choice_logliks(model, tok, items, batch_size=16, progress=False, share_context=True)
    assert torch.allclose(torch.tensor(one[0] + one[1]), torch.tensor(many[0] + many[1]), atol=1e-4)
    for a, b in zip(many, shared):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4)


def test_choice_logliks_truncate_from_the_left() -> None:
    tok, model = tiny_tokenizer(), tiny_model()
    item = MCItem("Anne walked to Bath with great composure, and Mr. Walter spoke of", ("Lyme", "the shrubbery"), 0)
    got = choice_logliks(model, tok, [item], max_length=8, progress=False)[0]
    for (context, continuation), ll in zip(item.requests(), got):
        ctx, cont = encode_pair(tok, context, continuation)
        tokens = (ctx + cont)[-9:]
        assert len(tokens) < len(ctx) + len(cont)
        assert ll == pytest.approx(hand_loglik(model, tokens[: len(tokens) - len(cont)], cont), abs=1e-4)


def test_score_multiple_choice_matches_argmax_of_hand_logliks() -> None:
    tok, model = tiny_tokenizer(), tiny_model(seed=1)
    items = _items()
    lls = [[hand_loglik(model, *encode_pair(tok, c, k)) for c, k in item.requests()] for item in items]
    acc = sum(max(range(len(ll)), key=ll.__getitem__) == item.gold for item, ll in zip(items, lls)) / len(items)
    norm = [[x / len(ch) for x, ch in zip(ll, item.choices)] for item, ll in zip(items, lls)]
    acc_norm = sum(max(range(len(n)), key=n.__getitem__) == item.gold for item, n in zip(items, norm)) / len(items)
    result = score_multiple_choice(model, tok, items, progress=False)
    assert result["acc"] == pytest.approx(acc) and result["acc_norm"] == pytest.approx(acc_norm)
    assert result["n"] == 4 and 0 <= result["acc_stderr"] <= 0.5
    with pytest.raises(ConfigError):
        score_multiple_choice(model, tok, [], progress=False)


def test_item_correctness_is_what_the_accuracy_metric_counts() -> None:
    items = _items()
    # item 0: gold 1 wins raw and per character; item 1: a raw tie goes to the first choice (gold 0), per
    # character "the Cobb" (8) beats "Lyme" (4); item 2: gold 1 loses both ways; item 3: gold 0 loses both ways
    lls = [[-9.0, -3.0, -8.0], [-2.0, -2.0], [-1.0, -1.5], [-7.0, -1.0]]
    correct, correct_norm = item_correctness(items, lls)
    assert correct == [True, True, False, False] and correct_norm == [True, False, False, False]
    metric = MultipleChoiceAccuracy()
    metric.update(*multiple_choice_tensors(items, lls))
    result = metric.compute()
    assert float(result["acc"]) == pytest.approx(sum(correct) / 4)
    assert float(result["acc_norm"]) == pytest.approx(sum(correct_norm) / 4)
    with pytest.raises(ConfigError, match="at least one"):
        item_correctness([], [])


def test_multiple_choice_tensors_pad_ragged_items() -> None:
    items = _items()
    scores, lengths, gold, valid = multiple_choice_tensors(items, [[-1.0] * len(i.choices) for i in items])
    assert scores.shape == (4, 3) and valid.sum() == 9 and gold.tolist() == [1, 0, 1, 0]
    assert lengths[0, 1] == len("and the evening was fine") and math.isinf(float(scores[1, 2]))


# ------------------------------------------------------------------------------------ multi-rank sync
def test_metrics_sync_across_two_gloo_ranks(tmp_path) -> None:
    logits, labels = _random_lm_batch(seed=5, b=5)
    gen = torch.Generator().manual_seed(5)
    mc = (torch.randn(7, 4, generator=gen), torch.randint(1, 30, (7, 4), generator=gen),
          torch.randint(0, 3, (7,), generator=gen), torch.tensor([[True, True, True, False]] * 7))
    single_ppl, single_mc = Perplexity(), MultipleChoiceAccuracy()
    single_ppl.update(logits, labels)
    single_mc.update(*mc)
    expected = {"ppl": float(single_ppl.compute()), **{k: float(v) for k, v in single_mc.compute().items()}}
    data = {"logits": logits, "labels": labels, "mc": mc}
    mp.spawn(ddp_metrics_worker, args=(2, free_port(), data, str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert results[0] == pytest.approx(expected, rel=1e-6)
    assert results[1] == pytest.approx(expected, rel=1e-6)
    # each rank really saw only part of the data
    part = Perplexity()
    part.update(logits[0::2], labels[0::2])
    assert float(part.compute()) != pytest.approx(expected["ppl"], rel=1e-3)


def test_perplexity_update_nll_after_compute_is_not_stale() -> None:
    metric = Perplexity()
    metric.update_nll(torch.tensor(2.0), 2)
    assert float(metric.compute()) == pytest.approx(math.e)
    metric.update_nll(4.0, 2)
    assert float(metric.compute()) == pytest.approx(math.exp(1.5))


# ------------------------------------------------------------------------ agreement with lm-eval itself
@pytest.mark.slow  # tiny model, but importing and running lm-eval takes 15-60 s
def test_scores_agree_with_lm_eval_on_its_own_task_definitions(tmp_path) -> None:
    """lm-eval's shipped YAMLs (prompts, choices, targets) on local files give our log-likelihoods."""
    pytest.importorskip("lm_eval")
    import json

    from helpers_eval import STANDARD_RECORDS

    from adapruner_lightning.evaluation.lmeval_bridge import lmeval_multiple_choice, lmeval_standard_tasks
    from adapruner_lightning.evaluation.tasks import load_task
    from adapruner_lightning.evaluation.tasks_offline import make_next_sentence_task

    tok, model = tiny_tokenizer(add_bos=True), tiny_model(seed=2)
    files = {}
    for name, records in STANDARD_RECORDS.items():
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    theirs = lmeval_standard_tasks(model, tok, files, batch_size=4)
    for name, path in files.items():
        items = load_task(name, path)
        ours = choice_logliks(model, tok, items, progress=False)
        assert len(ours) == len(theirs[name]["logliks"]), name
        for a, b in zip(ours, theirs[name]["logliks"]):
            assert a == pytest.approx(b, abs=2e-3), name
        scores = score_multiple_choice(model, tok, items, progress=False)
        assert scores["acc"] == pytest.approx(theirs[name]["acc"]), name
        if "acc_norm" in theirs[name]:
            assert scores["acc_norm"] == pytest.approx(theirs[name]["acc_norm"]), name
    # generated items through a generated lm-eval task
    from helpers_eval import synthetic_text

    items = make_next_sentence_task(synthetic_text(60, seed=4), n_items=6, n_choices=3, context_sentences=1)
    result = lmeval_multiple_choice(model, tok, items)
    assert result["acc"] == pytest.approx(score_multiple_choice(model, tok, items, progress=False)["acc"])
    for a, b in zip(choice_logliks(model, tok, items, progress=False), result["logliks"]):
        assert a == pytest.approx(b, abs=2e-3)


# sliding windows small enough that the longest items fall back to the plain path, so both paths run
_PACKING_FAMILIES = {
    "llama": {},
    "mistral": {"sliding_window": 40},
    "qwen2": {},
    "gemma2": {"sliding_window": 40, "layer_types": ["sliding_attention", "full_attention"]},
    "gemma3_text": {"sliding_window": 40, "layer_types": ["sliding_attention", "full_attention"],
                    "query_pre_attn_scalar": 16},
    "phi3": {"pad_token_id": 0, "eos_token_id": 0, "bos_token_id": 0},
}


def _varied_items(n: int = 12, seed: int = 0) -> list[MCItem]:
    """Items with contexts of 1 to ~40 words and 2 to 4 choices of different lengths, from synthetic text."""
    import random

    from helpers_eval import synthetic_text

    words = synthetic_text(seed=seed).split()
    rng = random.Random(seed)
    items = []
    for k in range(n):
        start = rng.randrange(len(words) - 60)
        context = " ".join(words[start : start + rng.randint(1, 40)])
        choices = tuple(" ".join(words[start + 50 + j : start + 50 + j + rng.randint(1, 8)]) for j in range(rng.randint(2, 4)))
        items.append(MCItem(context, choices, k % len(choices)))
    return items


@pytest.mark.parametrize("family", list(_PACKING_FAMILIES))
def test_packed_choices_equal_separate_sequences_across_architectures(family: str, caplog) -> None:
    """Packing a context with all its choices (tree mask + positions) gives lm-eval's plain numbers on every
    supported family, sliding-window ones included, with several items per batch."""
    from conftest import make_tiny_model

    tok = tiny_tokenizer()
    model = make_tiny_model(family, vocab_size=len(tok), layers=2, **_PACKING_FAMILIES[family])
    items = _varied_items()
    plain = choice_logliks(model, tok, items, batch_size=5, progress=False, share_context=False)
    with caplog.at_level("WARNING", logger="adapruner_lightning.evaluation.loglik"):
        packed = choice_logliks(model, tok, items, batch_size=5, progress=False, share_context=True)
    assert "plain way" not in caplog.text  # the packed path really ran
    for a, b in zip(packed, plain):
        assert a == pytest.approx(b, abs=1e-4)
    for item, lls in zip(items[:3], packed):
        for (context, continuation), ll in zip(item.requests(), lls):
            assert ll == pytest.approx(hand_loglik(model, *encode_pair(tok, context, continuation)), abs=1e-3)


def test_packed_choices_on_a_pruned_model_with_per_layer_head_counts() -> None:
    from conftest import make_tiny_model

    from adapruner_lightning.core.config import PruningConfig
    from adapruner_lightning.core.session import PruningSession
    from adapruner_lightning.core.physical import apply_plan

    tok = tiny_tokenizer()
    model = make_tiny_model("llama", vocab_size=len(tok), layers=3)
    pool = torch.randint(0, len(tok), (4, 16), generator=torch.Generator().manual_seed(0))
    config = PruningConfig(target_ratio=0.3, metric="magnitude_l2", num_samples=4, keep_first=1)
    session = PruningSession(model, config, pool, progress=False)
    plan = session.plan(session.default_candidate())
    apply_plan(model, plan)
    assert len({layer.self_attn.q_proj.out_features for layer in model.model.layers}) > 1  # really non-uniform
    items = _varied_items(seed=1)
    packed = choice_logliks(model, tok, items, batch_size=4, progress=False)
    plain = choice_logliks(model, tok, items, batch_size=4, progress=False, share_context=False)
    for a, b in zip(packed, plain):
        assert a == pytest.approx(b, abs=1e-4)


class _IgnoresPositions(torch.nn.Module):
    """A causal LM wrapper that drops custom 4D masks and position ids, as a non-HF model might."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm, self.config = lm, lm.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = None
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def test_packing_falls_back_to_plain_scoring_when_the_model_ignores_the_tree_mask(caplog) -> None:
    tok, model = tiny_tokenizer(), tiny_model(seed=2)
    items = _varied_items(n=6, seed=2)
    plain = choice_logliks(model, tok, items, progress=False, share_context=False)
    with caplog.at_level("WARNING", logger="adapruner_lightning.evaluation.loglik"):
        got = choice_logliks(_IgnoresPositions(model), tok, items, progress=False)
    assert "_IgnoresPositions does not score packed choices" in caplog.text
    for a, b in zip(got, plain):
        assert a == pytest.approx(b, abs=1e-4)
