"""Shared helpers of the evaluation tests: a tiny offline tokenizer, a tiny Llama, synthetic prose, DDP workers."""

from __future__ import annotations

import functools
import math
import os
import random
import socket
from typing import Any

import torch

_NAMES = ["Anne", "Walter", "Mary", "Charles", "Louisa", "Henrietta", "Frederick", "Elizabeth", "Benwick", "Harville"]
_PLACES = ["Bath", "Lyme", "Kellynch", "Uppercross", "Camden Place", "the Cobb", "the pump-room", "the shrubbery"]
_VERBS = ["walked to", "wrote from", "returned to", "spoke of", "thought of", "dined at", "hurried towards", "remembered"]
_TAILS = [
    "with great composure",
    "before the rain began",
    "though nobody had asked her",
    "and the evening was fine",
    "for the second time that week",
    "in a very agreeable manner",
    "while the others were talking",
]


def synthetic_text(n_paragraphs: int = 60, seed: int = 0) -> str:
    """Deterministic prose-like text: paragraphs of 3-7 template sentences, a chapter heading every 15."""
    rng = random.Random(seed)
    paragraphs = []
    for p in range(n_paragraphs):
        if p % 15 == 0:
            paragraphs.append(f"Chapter {p // 15 + 1}")
        sentences = []
        for _ in range(rng.randint(3, 7)):
            words = f"{rng.choice(_NAMES)} {rng.choice(_VERBS)} {rng.choice(_PLACES)} {rng.choice(_TAILS)}"
            if rng.random() < 0.3:
                words += f", and Mr. {rng.choice(_NAMES)} {rng.choice(_VERBS)} {rng.choice(_PLACES)}"
            sentences.append(words + rng.choice([".", ".", ".", "!", "?"]))
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


@functools.lru_cache(maxsize=2)
def tiny_tokenizer(add_bos: bool = False) -> Any:
    """A byte-level BPE tokenizer (about 300 tokens) trained here on synthetic text, no download.

    With ``add_bos`` it prepends BOS by default, as Llama tokenizers do.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([synthetic_text(seed=s) for s in range(3)], trainer)
    if add_bos:
        bos = tok.token_to_id("<|endoftext|>")
        tok.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<pad>"
    )


def tiny_model(vocab_size: int | None = None, seed: int = 0, max_positions: int = 512) -> Any:
    """A randomly initialised 2-layer Llama (GQA 4/2 heads) in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=vocab_size or len(tiny_tokenizer()),
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger logits than the default init, so choices really differ
        model.lm_head.weight.mul_(20.0)
    return model.eval()


def hand_loglik(model: Any, context_ids: list[int], cont_ids: list[int]) -> float:
    """Sum of log p(continuation | context), computed position by position from one full forward pass."""
    tokens = torch.tensor([context_ids + cont_ids])
    with torch.no_grad():
        logits = model(input_ids=tokens, use_cache=False).logits[0].double()
    total = 0.0
    for k, token in enumerate(cont_ids):
        row = logits[len(context_ids) + k - 1]
        total += float(row[token] - torch.logsumexp(row, dim=0))
    return total


def hand_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Summed next-token NLL and token count by explicit loops (labels shifted, -100 ignored)."""
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target == -100:
                continue
            row = logits[b, t].double()
            total -= float(row[target] - math.log(float(torch.exp(row).sum())))
            count += 1
    return total, count


def free_port() -> int:
    """A free TCP port on localhost."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ddp_metrics_worker(rank: int, world: int, port: int, data: dict[str, Any], out_dir: str) -> None:
    """One rank of the sync test: update both metrics with this rank's share, compute, save the result."""
    import torch.distributed as dist

    from adapruner_lightning.evaluation.metrics import MultipleChoiceAccuracy, Perplexity

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ppl, mc = Perplexity(), MultipleChoiceAccuracy()
        ppl.update(data["logits"][rank::world], data["labels"][rank::world])
        mc.update(*(t[rank::world] for t in data["mc"]))
        result = {"ppl": float(ppl.compute()), **{k: float(v) for k, v in mc.compute().items()}}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


#: A few records of each standard task in its published Hugging Face format (made up, same fields).
STANDARD_RECORDS: dict[str, list[dict[str, Any]]] = {
    "boolq": [
        {"question": "is bath in somerset", "passage": "Bath is a city in Somerset, England.", "idx": 0, "label": 1},
        {"question": "did anne marry walter", "passage": "Anne married Captain Wentworth.", "idx": 1, "label": 0},
    ],
    "piqa": [
        {"goal": "Open a jar", "sol1": "Twist the lid to the left.", "sol2": "Hit the lid with a feather.", "label": 0},
        {"goal": "Dry wet shoes", "sol1": "Put them in the pond.", "sol2": "Stuff them with newspaper.", "label": 1},
    ],
    "hellaswag": [
        {"ind": 4, "activity_label": "Home and Garden", "ctx_a": "[header] How to plant a tree [title] Dig a hole.",
         "ctx_b": "then", "ctx": "", "split": "val", "split_type": "indomain", "source_id": "wikihow~1",
         "endings": ["put the tree  in [step] the hole.", "eat the tree.", "sing a song.", "[title] Water it."], "label": "0"},
        {"ind": 5, "activity_label": "Walking", "ctx_a": "Anne walks to Bath.", "ctx_b": "she", "ctx": "", "split": "val",
         "split_type": "indomain", "source_id": "x", "endings": ["reads.", "sees Walter.", "flies.", "sleeps."], "label": "1"},
    ],
    "winogrande": [
        {"sentence": "Sarah was a better surgeon than Maria so _ always got the harder cases.",
         "option1": "Sarah", "option2": "Maria", "answer": "1"},
        {"sentence": "The trophy did not fit in the suitcase because the _ was too small.",
         "option1": "trophy", "option2": "suitcase", "answer": "2"},
    ],
    "arc_easy": [
        {"id": "a", "question": "Which is a gas?", "choices": {"text": ["ice", "steam", "rock"], "label": ["A", "B", "C"]},
         "answerKey": "B"},
        {"id": "b", "question": "How many legs has a cat?",
         "choices": {"text": ["two", "three", "four", "six"], "label": ["1", "2", "3", "4"]}, "answerKey": "3"},
    ],
    "openbookqa": [
        {"id": "7-980", "question_stem": "The sun is responsible for",
         "choices": {"text": ["puppies learning", "plants sprouting", "rain", "night"], "label": ["A", "B", "C", "D"]},
         "answerKey": "B"},
    ],
}
STANDARD_RECORDS["arc_challenge"] = STANDARD_RECORDS["arc_easy"]
